package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/regauth"
	regdaemon "github.com/corral-build/corral/internal/registry/daemon"
	"github.com/corral-build/corral/internal/registry/httpapi"
	"github.com/corral-build/corral/internal/testenv"
)

// registryAccess is what each registry route needs: "open", "any" (any
// valid credential), "token" (the token endpoint: Basic credentials), or an action on a repository ("pull *", "push r").
// The OCI API (the "/v2/" catch-all) is spelled out per operation. A route
// the registry serves that is missing here fails TestRegistryAuthMatrix.
var registryAccess = map[string][]registryCase{
	"GET /registry/status":                       {{"GET", "/registry/status", "open"}},
	"GET /livez":                                 {{"GET", "/livez", "open"}},
	"GET /readyz":                                {{"GET", "/readyz", "open"}},
	"GET /registry/vm":                           {{"GET", "/registry/vm", "pull *"}},
	"GET /registry/v2/vm":                        {{"GET", "/registry/v2/vm", "pull *"}},
	"GET /registry/vm/arch":                      {{"GET", "/registry/vm/arch", "pull *"}},
	"PUT /registry/vm/arch":                      {{"PUT", "/registry/vm/arch?id=x&arch=arm64", "push *"}},
	"GET /registry/vm/info":                      {{"GET", "/registry/vm/info?id=x", "pull *"}},
	"DELETE /registry/vm":                        {{"DELETE", "/registry/vm?id=x", "delete *"}},
	"DELETE /registry/revert":                    {{"DELETE", "/registry/revert?id=x", "delete *"}},
	"GET /registry/disk":                         {{"GET", "/registry/disk", "pull *"}},
	"POST /registry/corral/v1/uploads":           {{"POST", "/registry/corral/v1/uploads", "push *"}},
	"DELETE /registry/corral/v1/uploads/{id}":    {{"DELETE", "/registry/corral/v1/uploads/u1", "push *"}},
	"POST /registry/corral/v1/chunks/missing":    {{"POST", "/registry/corral/v1/chunks/missing", "push *"}},
	"PUT /registry/corral/v1/chunks/{digest}":    {{"PUT", "/registry/corral/v1/chunks/" + zeroDigest, "push *"}},
	"GET /registry/corral/v1/chunks/{digest}":    {{"GET", "/registry/corral/v1/chunks/" + zeroDigest, "pull *"}},
	"POST /registry/corral/v1/commit":            {{"POST", "/registry/corral/v1/commit", "push *"}},
	"POST /registry/corral/v1/packs":             {{"POST", "/registry/corral/v1/packs", "push *"}},
	"POST /registry/corral/v1/chunks/fetch":      {{"POST", "/registry/corral/v1/chunks/fetch", "pull *"}},
	"POST /registry/corral/v1/chunks/signatures": {{"POST", "/registry/corral/v1/chunks/signatures", "push *"}},
	"GET /registry/corral/v1/manifest":           {{"GET", "/registry/corral/v1/manifest?id=x", "pull *"}},
	"/registry/":                                 {{"GET", "/registry/nothing", "pull *"}, {"POST", "/registry/nothing", "push *"}},
	"GET /v2/token":                              {{"GET", "/v2/token", "token"}},
	"POST /v2/token":                             {{"POST", "/v2/token", "open"}},
	"/v2/": {
		{"GET", "/v2/", "any"},
		{"GET", "/v2/_catalog", "pull *"},
		{"GET", "/v2/team/r/tags/list", "pull team/r"},
		{"GET", "/v2/team/r/manifests/v1", "pull team/r"},
		{"HEAD", "/v2/team/r/manifests/v1", "pull team/r"},
		{"PUT", "/v2/team/r/manifests/v1", "push team/r"},
		{"DELETE", "/v2/team/r/manifests/" + zeroDigest, "delete team/r"},
		{"GET", "/v2/team/r/blobs/" + zeroDigest, "pull team/r"},
		{"GET", "/v2/team/r/referrers/" + zeroDigest, "pull team/r"},
		{"HEAD", "/v2/team/r/blobs/" + zeroDigest, "pull team/r"},
		{"DELETE", "/v2/team/r/blobs/" + zeroDigest, "delete team/r"},
		{"POST", "/v2/team/r/blobs/uploads/", "push team/r"},
		{"GET", "/v2/team/r/blobs/uploads/u1", "push team/r"},
		{"PATCH", "/v2/team/r/blobs/uploads/u1", "push team/r"},
		{"PUT", "/v2/team/r/blobs/uploads/u1?digest=" + zeroDigest, "push team/r"},
		{"DELETE", "/v2/team/r/blobs/uploads/u1", "push team/r"},
		{"POST", "/v2/team/r/blobs/uploads/?mount=" + zeroDigest + "&from=team/src", "push team/r + pull team/src"},
	},
}

type registryCase struct{ method, path, need string }

var zeroDigest = "sha256:" + strings.Repeat("0", 64)

// TestRegistryAuthMatrix: every registry route × every kind of caller (none,
// a wrong root token, a forged, expired or other-repository token, a token
// for each single action, root) → allowed, 401 or 403 as the route needs.
func TestRegistryAuthMatrix(t *testing.T) {
	for _, p := range httpapi.Patterns() {
		if _, ok := registryAccess[p]; !ok {
			t.Errorf("registry route %q has no entry in registryAccess: say who may call it", p)
		}
	}
	c := testenv.StartCluster(t, testenv.Options{Registry: true,
		RegistryAuth: &regdaemon.Auth{Enabled: true, RootToken: "s3cret"}})
	reg := c.Registry.URL
	key := regauth.NewKey("s3cret")
	tok := func(k regauth.Key, name string, ttl time.Duration, actions ...string) string {
		s, _, err := k.Issue("test", "matrix", []regauth.Access{{Type: "repository", Name: name, Actions: actions}}, ttl, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return "Bearer " + s
	}
	type caller struct {
		name, header string
		grants       []string // "action repo"; "*" repo matches all
		valid        bool
	}
	callers := []caller{
		{"none", "", nil, false},
		{"wrong root token", basic("root", "nope"), nil, false},
		{"forged token", tok(regauth.NewKey("other"), "*", time.Minute, "*"), nil, false},
		{"expired token", tok(key, "*", -2*time.Minute, "*"), nil, false},
		{"token for another repository", tok(key, "team/other", time.Minute, "*"), []string{"pull team/other", "push team/other", "delete team/other"}, true},
		{"pull", tok(key, "*", time.Minute, "pull"), []string{"pull *"}, true},
		{"push", tok(key, "*", time.Minute, "push"), []string{"push *"}, true},
		{"delete", tok(key, "*", time.Minute, "delete"), []string{"delete *"}, true},
		{"pull team/r", tok(key, "team/r", time.Minute, "pull"), []string{"pull team/r"}, true},
		{"push team/r", tok(key, "team/r", time.Minute, "push"), []string{"push team/r"}, true},
		{"root", basic("root", "s3cret"), []string{"pull *", "push *", "delete *"}, true},
	}
	grants := func(cl caller, need string) bool {
		for _, part := range strings.Split(need, " + ") {
			action, repo, _ := strings.Cut(part, " ")
			if !slices.ContainsFunc(cl.grants, func(g string) bool {
				ga, gr, _ := strings.Cut(g, " ")
				return ga == action && (gr == "*" || gr == repo)
			}) {
				return false
			}
		}
		return true
	}
	for _, pattern := range httpapi.Patterns() {
		for _, rc := range registryAccess[pattern] {
			for _, cl := range callers {
				want := "allowed"
				switch {
				case rc.need == "open":
				case rc.need == "token" && cl.name != "root":
					want = "401"
				case rc.need == "token":
				case !cl.valid:
					want = "401"
				case rc.need == "any":
				case !grants(cl, rc.need) && strings.HasPrefix(rc.path, "/v2/"):
					// The token-auth spec: 401 naming the scope it needs.
					want = "401 insufficient_scope"
				case !grants(cl, rc.need):
					want = "403"
				}
				code, body, challenge := authCallBody(t, rc.method, reg+rc.path, cl.header, "")
				got := "allowed"
				switch {
				case code == 401 && strings.Contains(challenge, `error="insufficient_scope"`):
					got = "401 insufficient_scope"
				case code == 401 || code == 403:
					got = fmt.Sprint(code)
				}
				if got != want {
					t.Errorf("%s %s as %s: HTTP %d (%.120s), want %s", rc.method, rc.path, cl.name, code, body, want)
				}
				if code >= 500 {
					t.Errorf("%s %s as %s: HTTP %d %.200s", rc.method, rc.path, cl.name, code, body)
				}
			}
		}
	}
}
