// Package regauth is the registry's token authentication, in the shape of
// the distribution token spec (what docker, oras, crane, skopeo and tart
// speak): a 401 with a Bearer challenge sends the client to a token
// endpoint, which authenticates it and answers a short-lived signed token
// scoped to repositories and actions. Tokens are JWTs signed with HS256
// under a key derived from a secret the controller and the registry share
// (the root token unless told otherwise), so any controller or registry
// replica issues and checks them without a key exchange or shared state.
package regauth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
)

// Actions on a repository.
const (
	Pull   = "pull"
	Push   = "push"
	Delete = "delete"
)

// Service is the audience of every token: the registry.
const Service = "corral-registry"

// DefaultTTL is how long an issued token lasts.
const DefaultTTL = 5 * time.Minute

// Access is one grant: actions on a named resource ("repository", and the
// name "*" for every repository: the template API is not per repository).
type Access struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

// Claims are what a token says.
type Claims struct {
	Issuer    string   `json:"iss"`
	Subject   string   `json:"sub"`
	Audience  string   `json:"aud"`
	ExpiresAt int64    `json:"exp"`
	NotBefore int64    `json:"nbf"`
	IssuedAt  int64    `json:"iat"`
	ID        string   `json:"jti"`
	Access    []Access `json:"access"`
}

// Allows reports whether the claims grant action on the repository name.
func (c Claims) Allows(name, action string) bool {
	for _, a := range c.Access {
		if a.Type == "repository" && (a.Name == name || a.Name == "*") &&
			(slices.Contains(a.Actions, action) || slices.Contains(a.Actions, "*")) {
			return true
		}
	}
	return false
}

// Key signs and checks tokens. The zero Key signs nothing.
type Key struct{ k []byte }

// NewKey derives the signing key from the shared secret; an empty secret
// gives the zero Key.
func NewKey(secret string) Key {
	if secret == "" {
		return Key{}
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("corral registry token signing key v1"))
	return Key{k: m.Sum(nil)}
}

// Valid reports whether the key can sign.
func (k Key) Valid() bool { return len(k.k) > 0 }

var b64 = base64.RawURLEncoding

const header = `{"alg":"HS256","typ":"JWT"}`

// Issue signs a token for subject with these grants.
func (k Key) Issue(issuer, subject string, access []Access, ttl time.Duration, now time.Time) (string, Claims, error) {
	if !k.Valid() {
		return "", Claims{}, errors.New("registry tokens: no signing secret configured")
	}
	id := make([]byte, 12)
	_, _ = rand.Read(id)
	c := Claims{Issuer: issuer, Subject: subject, Audience: Service, IssuedAt: now.Unix(), NotBefore: now.Unix() - 60,
		ExpiresAt: now.Add(ttl).Unix(), ID: hex.EncodeToString(id), Access: access}
	if c.Access == nil {
		c.Access = []Access{}
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return "", Claims{}, err
	}
	signed := b64.EncodeToString([]byte(header)) + "." + b64.EncodeToString(payload)
	return signed + "." + b64.EncodeToString(k.sign(signed)), c, nil
}

func (k Key) sign(s string) []byte {
	m := hmac.New(sha256.New, k.k)
	m.Write([]byte(s))
	return m.Sum(nil)
}

// ErrToken is a token that is malformed, forged, expired or not for us.
var ErrToken = errors.New("invalid registry token")

// Verify checks a token's signature, audience and lifetime.
func (k Key) Verify(token string, now time.Time) (Claims, error) {
	if !k.Valid() || len(token) > 16<<10 {
		return Claims{}, ErrToken
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return Claims{}, ErrToken
	}
	h, err := b64.DecodeString(parts[0])
	if err != nil || string(h) != header {
		return Claims{}, ErrToken
	}
	sig, err := b64.DecodeString(parts[2])
	if err != nil || !hmac.Equal(sig, k.sign(parts[0]+"."+parts[1])) {
		return Claims{}, ErrToken
	}
	payload, err := b64.DecodeString(parts[1])
	if err != nil {
		return Claims{}, ErrToken
	}
	var c Claims
	if json.Unmarshal(payload, &c) != nil || c.Audience != Service {
		return Claims{}, ErrToken
	}
	if t := now.Unix(); t >= c.ExpiresAt || t < c.NotBefore {
		return Claims{}, fmt.Errorf("%w: expired or not yet valid", ErrToken)
	}
	return c, nil
}

// ParseScopes parses the token endpoint's scope parameters
// ("repository:vm/macos:pull,push"; several, space- or parameter-separated).
// Unknown resource types are dropped, as the spec allows.
func ParseScopes(scopes []string) ([]Access, error) {
	var out []Access
	for _, s := range scopes {
		for _, one := range strings.Fields(s) {
			typ, rest, ok := strings.Cut(one, ":")
			i := strings.LastIndex(rest, ":")
			if !ok || i <= 0 || i == len(rest)-1 {
				return nil, fmt.Errorf("scope %q: want type:name:actions", one)
			}
			if typ != "repository" {
				continue
			}
			name, actions := rest[:i], strings.Split(rest[i+1:], ",")
			if len(name) > 255 {
				return nil, fmt.Errorf("scope %q: name longer than 255 characters", one)
			}
			for _, a := range actions {
				if a != Pull && a != Push && a != Delete && a != "*" {
					return nil, fmt.Errorf("scope %q: unknown action %q (want pull, push, delete or *)", one, a)
				}
			}
			out = append(out, Access{Type: typ, Name: name, Actions: actions})
		}
	}
	if len(out) > 64 {
		return nil, fmt.Errorf("scope: %d grants asked, at most 64", len(out))
	}
	return out, nil
}

// Grant narrows asked to the actions allowed reports true for.
func Grant(asked []Access, allowed func(action string) bool) []Access {
	out := []Access{}
	for _, a := range asked {
		var acts []string
		for _, act := range a.Actions {
			if act == "*" {
				for _, x := range []string{Pull, Push, Delete} {
					if allowed(x) && !slices.Contains(acts, x) {
						acts = append(acts, x)
					}
				}
			} else if allowed(act) && !slices.Contains(acts, act) {
				acts = append(acts, act)
			}
		}
		if len(acts) > 0 {
			out = append(out, Access{Type: a.Type, Name: a.Name, Actions: acts})
		}
	}
	return out
}

// TokenResponse is the token endpoint's answer.
type TokenResponse = apiv1.RegistryToken

// Response wraps a signed token for the token endpoint.
func Response(token string, c Claims) TokenResponse {
	return TokenResponse{Token: token, AccessToken: token, ExpiresIn: int(c.ExpiresAt - c.IssuedAt),
		IssuedAt: time.Unix(c.IssuedAt, 0).UTC().Format(time.RFC3339)}
}
