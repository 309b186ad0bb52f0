package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/regauth"
	regdaemon "github.com/corral-build/corral/internal/registry/daemon"
	"github.com/corral-build/corral/internal/store"
	"github.com/corral-build/corral/internal/testenv"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// authedCloud is a cloud whose controller and registry both require
// credentials (root token s3cret, API keys on), with one node.
func authedCloud(t *testing.T, anonymousPull bool) *testenv.Cluster {
	return testenv.StartCluster(t, testenv.Options{Registry: true,
		Auth:         controller.AuthConfig{Enabled: true, RootToken: "s3cret", APIKeys: true},
		RegistryAuth: &regdaemon.Auth{Enabled: true, RootToken: "s3cret", AnonymousPull: anonymousPull},
		Nodes:        []testenv.NodeOptions{{Name: "n1", Capacity: 2}}})
}

// TestRegistryRequiresCredentials: with auth on, the registry refuses
// strangers (they used to push, overwrite and delete freely), takes the root
// token, and nodes pull with the token the controller hands them.
func TestRegistryRequiresCredentials(t *testing.T) {
	c := authedCloud(t, false)
	reg := c.Registry.URL
	ctx := context.Background()

	// Strangers: nothing but the health check.
	for _, r := range []struct{ method, path string }{
		{"GET", "/registry/vm"}, {"DELETE", "/registry/vm?id=x"}, {"DELETE", "/registry/revert?id=x"},
		{"POST", "/registry/corral/v1/uploads"}, {"POST", "/registry/corral/v1/commit"}, {"GET", "/registry/disk"},
		{"GET", "/v2/"}, {"GET", "/v2/_catalog"}, {"DELETE", "/v2/x/blobs/sha256:" + strings.Repeat("0", 64)},
	} {
		for _, cred := range []string{"", basic("root", "wrong"), "Bearer not.a.token", basic("key", "nope")} {
			if code, body := authCall(t, r.method, reg+r.path, cred, ""); code != 401 {
				t.Errorf("%s %s with %q: HTTP %d %s, want 401", r.method, r.path, cred, code, body)
			}
		}
	}
	if code, _ := authCall(t, "GET", reg+"/registry/status", "", ""); code != 200 {
		t.Errorf("health check: HTTP %d", code)
	}
	// The OCI challenge sends token clients to the token endpoint.
	req, _ := http.NewRequest("GET", reg+"/v2/vm/base/manifests/latest", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	want := `Bearer realm="` + reg + `/v2/token",service="corral-registry",scope="repository:vm/base:pull"`
	if got := resp.Header.Get("WWW-Authenticate"); resp.StatusCode != 401 || got != want {
		t.Errorf("challenge: HTTP %d %q, want %q", resp.StatusCode, got, want)
	}

	// Root pushes; a node pulls it with the controller's token.
	rc, _ := client.NewRegistry(reg)
	if _, err := rc.Templates(ctx); err == nil {
		t.Fatal("listing without credentials worked")
	}
	rc.UseRootToken("s3cret")
	src := newVMDir(t, 0, 1)
	os.WriteFile(filepath.Join(src, "config.json"), []byte(fmt.Sprintf(`{"arch":%q}`, runtimeArch())), 0o644)
	pushed, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "guarded", Tag: "v1"})
	if err != nil {
		t.Fatalf("root push: %v", err)
	}
	ids, err := c.Client.StartInstances(ctx, map[string]any{"vmid": pushed.TemplateID})
	if err != nil {
		t.Fatal(err)
	}
	c.WaitState(ids[0], apiv1.StateStarted, 30*time.Second)
	// The controller reaches the registry with its own token (template list).
	if code, body := authCall(t, "GET", c.Controllers[0].URL+"/api/v1/registry/vm", basic("root", "s3cret"), ""); code != 200 || !strings.Contains(body, `"guarded"`) {
		t.Errorf("controller's registry proxy: HTTP %d %s", code, body)
	}
}

// TestRegistryTokenPermissions: the controller's token endpoint grants what
// the caller's permissions allow (pull with view, push and delete with
// manage_templates; nodes pull only), and the registry enforces the grant
// per repository and action.
func TestRegistryTokenPermissions(t *testing.T) {
	c := authedCloud(t, false)
	ctx := context.Background()
	base, reg := c.Controllers[0].URL, c.Registry.URL
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.Etcd.ClientURL}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	st := store.New(cli, "")
	root := basic("root", "s3cret")
	if code, body := authCall(t, "POST", base+"/api/v1/permission-group", root,
		`{"name":"viewers","permissions":["view"],"members":["key:viewer"]}`); code != 200 || !strings.Contains(body, `"OK"`) {
		t.Fatalf("permission group: %d %s", code, body)
	}
	viewer := loginNewKey(t, st, base, "viewer")
	token := func(cred, scope string) (int, apiv1.RegistryToken) {
		code, body := authCall(t, "GET", base+"/api/v1/registry/token?service=corral-registry&scope="+scope, cred, "")
		var env struct {
			Body apiv1.RegistryToken `json:"body"`
		}
		json.Unmarshal([]byte(body), &env)
		return code, env.Body
	}
	if code, _ := token("", "repository:*:pull"); code != 401 {
		t.Errorf("token without credentials: HTTP %d", code)
	}
	if code, _ := token(basic("root", "bad"), "repository:*:pull"); code != 401 {
		t.Errorf("token with a wrong root token: HTTP %d", code)
	}
	_, view := token(viewer, "repository:*:pull,push,delete")
	if view.Token == "" {
		t.Fatal("the viewer got no token")
	}
	bearer := "Bearer " + view.Token
	if code, body := authCall(t, "GET", reg+"/registry/vm", bearer, ""); code != 200 {
		t.Errorf("viewer lists: HTTP %d %s", code, body)
	}
	for _, r := range []struct{ method, path string }{{"POST", "/registry/corral/v1/uploads"}, {"DELETE", "/registry/vm?id=x"}} {
		if code, body := authCall(t, r.method, reg+r.path, bearer, ""); code != 403 {
			t.Errorf("viewer %s %s: HTTP %d %s, want 403", r.method, r.path, code, body)
		}
	}
	// Basic with the session token as password: the registry asks the
	// controller, which is what `docker login`-style clients send.
	session := strings.TrimPrefix(viewer, "Bearer ")
	if code, body := authCall(t, "GET", reg+"/registry/vm", basic("viewer", session), ""); code != 200 {
		t.Errorf("viewer by Basic: HTTP %d %s", code, body)
	}
	if code, _ := authCall(t, "DELETE", reg+"/registry/vm?id=x", basic("viewer", session), ""); code != 403 {
		t.Errorf("viewer deletes by Basic: HTTP %d, want 403", code)
	}

	// A repository-scoped token reaches only its repository.
	_, scoped := token(root, "repository:team/a:pull,push")
	img, _ := random.Image(1024, 1)
	host := strings.TrimPrefix(reg, "http://")
	ref := func(s string) name.Reference { r, _ := name.ParseReference(host+"/"+s, name.Insecure); return r }
	bearerAuth := authn.FromConfig(authn.AuthConfig{RegistryToken: scoped.Token})
	if err := remote.Write(ref("team/a:v1"), img, remote.WithAuth(bearerAuth)); err != nil {
		t.Fatalf("push with a token for team/a: %v", err)
	}
	if err := remote.Write(ref("team/b:v1"), img, remote.WithAuth(bearerAuth)); err == nil {
		t.Error("a token for team/a pushed to team/b")
	}

	// Real token clients: go-containerregistry (crane's engine) logs in
	// with Basic through the challenge and the token endpoint.
	if err := remote.Write(ref("ci/root:v1"), img, remote.WithAuth(&authn.Basic{Username: "root", Password: "s3cret"})); err != nil {
		t.Fatalf("crane-style push as root: %v", err)
	}
	if _, err := remote.Image(ref("ci/root:v1"), remote.WithAuth(&authn.Basic{Username: "viewer", Password: session})); err != nil {
		t.Errorf("crane-style pull as the viewer: %v", err)
	}
	if err := remote.Write(ref("ci/root:v2"), img, remote.WithAuth(&authn.Basic{Username: "viewer", Password: session})); err == nil {
		t.Error("the viewer pushed through the token flow")
	}
	if _, err := remote.Image(ref("ci/root:v1"), remote.WithAuth(&authn.Basic{Username: "root", Password: "wrong"})); err == nil {
		t.Error("a wrong root token pulled")
	}
	if _, err := remote.Image(ref("ci/root:v1")); err == nil {
		t.Error("an anonymous caller pulled")
	}

	// A node's credential gets pull, never push.
	nodeTok := nodeCredential(t, c)
	_, nt := token("Bearer "+nodeTok, "repository:*:pull,push")
	if nt.Token == "" {
		t.Fatal("the node got no token")
	}
	if code, _ := authCall(t, "GET", reg+"/registry/vm", "Bearer "+nt.Token, ""); code != 200 {
		t.Errorf("node lists: HTTP %d", code)
	}
	if code, _ := authCall(t, "POST", reg+"/registry/corral/v1/uploads", "Bearer "+nt.Token, ""); code != 403 {
		t.Errorf("node starts an upload: HTTP %d, want 403", code)
	}
	_ = ctx
}

// TestRegistryAnonymousPull: with --anonymous-pull, callers without
// credentials read (token clients get a pull-only token) but never write.
func TestRegistryAnonymousPull(t *testing.T) {
	c := authedCloud(t, true)
	reg := c.Registry.URL
	host := strings.TrimPrefix(reg, "http://")
	ref := func(s string) name.Reference { r, _ := name.ParseReference(host+"/"+s, name.Insecure); return r }
	img, _ := random.Image(1024, 1)
	if err := remote.Write(ref("pub/img:v1"), img); err == nil {
		t.Fatal("an anonymous caller pushed")
	}
	if err := remote.Write(ref("pub/img:v1"), img, remote.WithAuth(&authn.Basic{Username: "root", Password: "s3cret"})); err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Image(ref("pub/img:v1")); err != nil {
		t.Errorf("anonymous pull: %v", err)
	}
	if code, _ := authCall(t, "GET", reg+"/registry/vm", "", ""); code != 200 {
		t.Errorf("anonymous template list: HTTP %d", code)
	}
	if code, _ := authCall(t, "DELETE", reg+"/registry/vm?id=x", "", ""); code != 401 {
		t.Errorf("anonymous delete: HTTP %d, want 401", code)
	}
}

// nodeCredential joins a node by hand and returns its own credential.
func nodeCredential(t *testing.T, c *testenv.Cluster) string {
	t.Helper()
	code, body := authCall(t, "POST", c.Controllers[0].URL+"/api/v1/agent/join", "Bearer test-token",
		`{"report":{"node_id":"`+apiv1.NewID()+`","node_name":"probe","capacity":1}}`)
	var env struct {
		Body apiv1.JoinResponse `json:"body"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &env) != nil || env.Body.NodeToken == "" {
		t.Fatalf("join: HTTP %d %s", code, body)
	}
	return env.Body.NodeToken
}

// A registry token given as the Basic password at the token endpoint (how
// tart and docker-style clients carry it) buys a token no broader than it
// and expiring no later; a forged one buys nothing.
func TestRegistryTokenAsPassword(t *testing.T) {
	c := authedCloud(t, false)
	reg := c.Registry.URL
	token := func(cred, scope string) (int, apiv1.RegistryToken) {
		code, body := authCall(t, "GET", reg+"/v2/token?service=corral-registry&scope="+scope, cred, "")
		var tok apiv1.RegistryToken
		_ = json.Unmarshal([]byte(body), &tok)
		return code, tok
	}
	code, pull := token(basic("root", "s3cret"), "repository:vm/base:pull")
	if code != 200 || pull.Token == "" {
		t.Fatalf("root token: %d", code)
	}
	code, again := token(basic("token", pull.Token), "repository:vm/base:pull,push")
	if code != 200 || again.Token == "" {
		t.Fatalf("token for a token: %d", code)
	}
	claims := decodeClaims(t, again.Token)
	if len(claims.Access) != 1 || strings.Join(claims.Access[0].Actions, ",") != "pull" || claims.Access[0].Name != "vm/base" {
		t.Fatalf("granted %+v, want pull on vm/base only", claims.Access)
	}
	if claims.ExpiresAt > decodeClaims(t, pull.Token).ExpiresAt {
		t.Fatal("the new token outlives the one it was bought with")
	}
	if _, other := token(basic("token", pull.Token), "repository:other:pull"); len(decodeClaims(t, other.Token).Access) != 0 {
		t.Fatal("a token for one repository bought one for another")
	}
	forged := pull.Token[:len(pull.Token)-4] + "AAAA"
	if code, _ := token(basic("token", forged), "repository:vm/base:pull"); code != 401 {
		t.Fatalf("forged token: HTTP %d, want 401", code)
	}
}

func decodeClaims(t *testing.T, tok string) regauth.Claims {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token %q", tok)
	}
	data, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c regauth.Claims
	if err := json.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestTartAuthSequence follows what real Tart does with registry auth on
// (../shared/spec/tart-oci.md, from Tart's Registry.swift): no credentials
// until a 401; a token for exactly the challenge's scope; that one token for
// the whole push, HEAD before each disk layer included; a 403 ends the
// push. The upload challenge asked "push" only, so Tart's token could not
// HEAD its disk layers: real tart push failed with auth on.
func TestTartAuthSequence(t *testing.T) {
	c := authedCloud(t, false)
	reg := c.Registry.URL
	do := func(method, url, auth string, body []byte) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, url, bytes.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		if method == http.MethodPut && strings.Contains(url, "/manifests/") {
			req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	// Tart's first request of a push, without credentials.
	resp := do(http.MethodPost, reg+"/v2/vm/tart/blobs/uploads/", "", nil)
	challenge := resp.Header.Get("WWW-Authenticate")
	if resp.StatusCode != 401 || !strings.Contains(challenge, `scope="repository:vm/tart:pull,push"`) {
		t.Fatalf("upload challenge: HTTP %d %q, want 401 asking pull,push", resp.StatusCode, challenge)
	}
	token := func(scope, auth string) string {
		t.Helper()
		resp, err := http.DefaultClient.Do(mustRequest(t, http.MethodGet,
			reg+"/v2/token?service=corral-registry&scope="+url.QueryEscape(scope), auth))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var tok struct{ Token string }
		if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || tok.Token == "" {
			t.Fatalf("token for %q: HTTP %d %v", scope, resp.StatusCode, err)
		}
		return "Bearer " + tok.Token
	}
	bearer := token("repository:vm/tart:pull,push", basic("root", "s3cret"))

	blob := func(data []byte) string {
		t.Helper()
		resp := do(http.MethodPost, reg+"/v2/vm/tart/blobs/uploads/", bearer, nil)
		if resp.StatusCode != 202 {
			t.Fatalf("POST upload with the challenge's token: HTTP %d", resp.StatusCode)
		}
		loc := resp.Header.Get("Location")
		if !strings.HasPrefix(loc, "http") {
			loc = reg + loc
		}
		d := sha256Hex(data)
		sep := "?"
		if strings.Contains(loc, "?") {
			sep = "&"
		}
		if resp := do(http.MethodPut, loc+sep+"digest="+d, bearer, data); resp.StatusCode != 201 {
			t.Fatalf("PUT blob: HTTP %d", resp.StatusCode)
		}
		return d
	}
	cfg := blob([]byte(`{"architecture":"arm64","os":"darwin"}`))
	vmcfg := blob([]byte(`{"os":"darwin"}`))
	// HEAD before the disk layer, with the same token: 404, then 200.
	disk := []byte("compressed disk bytes")
	if resp := do(http.MethodHead, reg+"/v2/vm/tart/blobs/"+sha256Hex(disk), bearer, nil); resp.StatusCode != 404 {
		t.Fatalf("HEAD of a disk layer not yet pushed, with the push token: HTTP %d, want 404", resp.StatusCode)
	}
	layer := blob(disk)
	if resp := do(http.MethodHead, reg+"/v2/vm/tart/blobs/"+layer, bearer, nil); resp.StatusCode != 200 {
		t.Fatalf("HEAD of a pushed disk layer: HTTP %d, want 200", resp.StatusCode)
	}
	manifest := `{"config":{"digest":"` + cfg + `","mediaType":"application/vnd.oci.image.config.v1+json","size":38},` +
		`"layers":[{"annotations":{},"digest":"` + vmcfg + `","mediaType":"application/vnd.cirruslabs.tart.config.v1","size":15},` +
		`{"digest":"` + layer + `","mediaType":"application/vnd.cirruslabs.tart.disk.v2","size":21}],` +
		`"mediaType":"application/vnd.oci.image.manifest.v1+json","schemaVersion":2}`
	if resp := do(http.MethodPut, reg+"/v2/vm/tart/manifests/v1", bearer, []byte(manifest)); resp.StatusCode != 201 {
		t.Fatalf("PUT manifest: HTTP %d", resp.StatusCode)
	}

	// A token that may only pull: its push is refused with 401 and the
	// scope it needs (Tart re-authenticates on 401; a 403 ended it).
	pullOnly := token("repository:vm/tart:pull", basic("root", "s3cret"))
	resp = do(http.MethodPost, reg+"/v2/vm/tart/blobs/uploads/", pullOnly, nil)
	challenge = resp.Header.Get("WWW-Authenticate")
	if resp.StatusCode != 401 || !strings.Contains(challenge, `error="insufficient_scope"`) ||
		!strings.Contains(challenge, `scope="repository:vm/tart:pull,push"`) {
		t.Fatalf("a push with a pull-only token: HTTP %d %q, want 401 insufficient_scope asking pull,push", resp.StatusCode, challenge)
	}
}

func mustRequest(t *testing.T, method, url, auth string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	return req
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}
