package regauth

import (
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
