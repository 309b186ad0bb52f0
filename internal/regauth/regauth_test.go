package regauth

import (
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestIssueVerify(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	k := NewKey("secret")
	access := []Access{{Type: "repository", Name: "vm/base", Actions: []string{Pull}}}
	tok, _, err := k.Issue("test", "alice", access, time.Minute, now)
	if err != nil {
		t.Fatal(err)
	}
	c, err := k.Verify(tok, now.Add(30*time.Second))
	if err != nil || c.Subject != "alice" || !c.Allows("vm/base", Pull) || c.Allows("vm/base", Push) || c.Allows("vm/other", Pull) {
		t.Fatalf("verify: %+v %v", c, err)
	}
	for name, bad := range map[string]struct {
		tok string
		k   Key
		at  time.Time
	}{
		"expired":      {tok, k, now.Add(time.Minute)},
		"other secret": {tok, NewKey("other"), now},
		"no key":       {tok, Key{}, now},
		"tampered":     {strings.Replace(tok, ".", ".e", 1), k, now},
		"two parts":    {tok[:strings.LastIndex(tok, ".")], k, now},
		"alg none":     {"eyJhbGciOiJub25lIn0." + strings.Split(tok, ".")[1] + ".", k, now},
	} {
		if _, err := bad.k.Verify(bad.tok, bad.at); !errors.Is(err, ErrToken) {
			t.Errorf("%s: %v, want ErrToken", name, err)
		}
	}
	if _, _, err := (Key{}).Issue("t", "s", nil, time.Minute, now); err == nil {
		t.Error("the zero key signed")
	}
}

func TestScopes(t *testing.T) {
	got, err := ParseScopes([]string{"repository:vm/base:pull,push repository:a:b:pull", "registry:catalog:*"})
	if err != nil || len(got) != 2 || got[0].Name != "vm/base" || got[1].Name != "a:b" {
		t.Fatalf("%+v %v", got, err)
	}
	for _, bad := range []string{"repository", "repository:x", "repository::pull", "repository:x:", "repository:x:steal"} {
		if _, err := ParseScopes([]string{bad}); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	g := Grant([]Access{{Type: "repository", Name: "x", Actions: []string{"*"}}, {Type: "repository", Name: "y", Actions: []string{Push}}},
		func(a string) bool { return a == Pull })
	if len(g) != 1 || g[0].Name != "x" || len(g[0].Actions) != 1 || g[0].Actions[0] != Pull {
		t.Fatalf("grant %+v", g)
	}
}

// TestTokenBounds: a token is valid from a minute before it was issued
// (clock skew) up to, not including, its expiry; a token of no grants
// carries an empty list, not null; an over-long token is refused unread.
func TestTokenBounds(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	k := NewKey("secret")
	tok, c, err := k.Issue("test", "bob", nil, time.Minute, now)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(decodePayload(t, tok), `"access":[]`) {
		t.Fatalf("a token of no grants: %s", decodePayload(t, tok))
	}
	for at, ok := range map[time.Time]bool{
		now.Add(-60 * time.Second): true, now.Add(-61 * time.Second): false,
		now.Add(59 * time.Second): true, now.Add(60 * time.Second): false,
	} {
		if _, err := k.Verify(tok, at); (err == nil) != ok {
			t.Errorf("at %s after issue: %v, want valid %v", at.Sub(now), err, ok)
		}
	}
	if r := Response(tok, c); r.ExpiresIn != 60 || r.Token != tok || r.AccessToken != tok {
		t.Fatalf("response %+v", r)
	}
	long := tok + strings.Repeat("A", 16<<10)
	if _, err := k.Verify(long, now); !errors.Is(err, ErrToken) {
		t.Fatalf("an over-long token: %v", err)
	}
	for name, bad := range map[string]string{
		"bad header base64":  "!!." + strings.SplitN(tok, ".", 2)[1],
		"bad payload base64": strings.Split(tok, ".")[0] + ".!!." + strings.Split(tok, ".")[2],
	} {
		if _, err := k.Verify(bad, now); !errors.Is(err, ErrToken) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func decodePayload(t *testing.T, tok string) string {
	t.Helper()
	p, err := b64.DecodeString(strings.Split(tok, ".")[1])
	if err != nil {
		t.Fatal(err)
	}
	return string(p)
}

// TestScopeBounds: names up to 255 characters, at most 64 grants, and an
// action asked twice (or through *) granted once.
func TestScopeBounds(t *testing.T) {
	name := strings.Repeat("n", 255)
	if _, err := ParseScopes([]string{"repository:" + name + ":pull"}); err != nil {
		t.Fatalf("a 255-character name: %v", err)
	}
	if _, err := ParseScopes([]string{"repository:" + name + "n:pull"}); err == nil {
		t.Fatal("a 256-character name parsed")
	}
	many := strings.TrimSpace(strings.Repeat("repository:x:pull ", 64))
	if got, err := ParseScopes([]string{many}); err != nil || len(got) != 64 {
		t.Fatalf("64 grants: %d %v", len(got), err)
	}
	if _, err := ParseScopes([]string{many + " repository:y:pull"}); err == nil {
		t.Fatal("65 grants parsed")
	}
	g := Grant([]Access{{Type: "repository", Name: "x", Actions: []string{Pull, "*", Pull, Push}}}, func(string) bool { return true })
	if len(g) != 1 || strings.Join(g[0].Actions, ",") != "pull,push,delete" {
		t.Fatalf("grant %+v", g)
	}
	if g := Grant([]Access{{Type: "repository", Name: "x", Actions: []string{Push}}}, func(string) bool { return false }); g == nil || len(g) != 0 {
		t.Fatalf("nothing allowed: %#v, want an empty list", g)
	}
}

// TestSigningIsStable: the key derived from a secret and the signature it
// makes are fixed (a token issued before an upgrade verifies after it, and
// every replica sharing the secret agrees).
func TestSigningIsStable(t *testing.T) {
	if got := hex.EncodeToString(NewKey("secret").sign("x")); got != "61556b16fe9e27a3d68bd153b0d5c32ccbe89b69ea679bad1283e5e38678b549" {
		t.Fatalf("signature of %q under secret %q: %s", "x", "secret", got)
	}
}

// TestVerifyChecksTheAudience: a token signed with our key for another
// service is refused.
func TestVerifyChecksTheAudience(t *testing.T) {
	k := NewKey("secret")
	payload := b64.EncodeToString([]byte(`{"aud":"another-service","exp":4000000000,"nbf":0,"sub":"x","access":[]}`))
	signed := b64.EncodeToString([]byte(header)) + "." + payload
	if _, err := k.Verify(signed+"."+b64.EncodeToString(k.sign(signed)), time.Unix(1_800_000_000, 0)); !errors.Is(err, ErrToken) {
		t.Fatalf("a token for another audience: %v", err)
	}
}

// TestGrantKeepsAllowedActions: asked actions that are allowed are granted
// as asked.
func TestGrantKeepsAllowedActions(t *testing.T) {
	g := Grant([]Access{{Type: "repository", Name: "x", Actions: []string{Push, Pull}}}, func(string) bool { return true })
	if len(g) != 1 || strings.Join(g[0].Actions, ",") != "push,pull" {
		t.Fatalf("grant %+v", g)
	}
}
