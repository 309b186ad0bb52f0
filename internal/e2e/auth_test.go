package e2e

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/store"
	"github.com/corral-build/corral/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func authCall(t *testing.T, method, url, auth, body string) (int, string) {
	t.Helper()
	code, data, _ := authCallBody(t, method, url, auth, body)
	return code, data
}

// authCallBody is authCall that also returns the WWW-Authenticate header.
func authCallBody(t *testing.T, method, url, auth, body string) (int, string, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data), resp.Header.Get("WWW-Authenticate")
}

// TestAuthentication: with auth on, requests without valid credentials get
// HTTP 401 "Authentication Required"; the root token and API-key sessions
// (hand, decrypt, shake, Bearer) get in; nodes keep working.
func TestAuthentication(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Auth: controller.AuthConfig{Enabled: true, RootToken: "s3cret", APIKeys: true},
		Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 2}}})
	base := c.Controllers[0].URL
	root := "Basic " + base64.StdEncoding.EncodeToString([]byte("root:s3cret"))
	for _, bad := range []string{"", "Basic " + base64.StdEncoding.EncodeToString([]byte("root:")),
		"Basic " + base64.StdEncoding.EncodeToString([]byte("root:wrong")), "Bearer bm9wZQ==", "Basic !!!"} {
		code, body := authCall(t, "GET", base+"/api/v1/vm", bad, "")
		if code != 401 || strings.TrimSpace(body) != `{"status":"FAIL","message":"Authentication Required"}` {
			t.Errorf("credentials %q: HTTP %d %s", bad, code, body)
		}
	}
	// The dashboard sends browsers to its login page (no Basic prompt).
	if code, page := authCall(t, "GET", base+"/", "", ""); code != 200 || !strings.Contains(page, `id="token"`) {
		t.Errorf("dashboard without credentials: HTTP %d, not the login page", code)
	}
	if code, body := authCall(t, "GET", base+"/", root, ""); code != 200 || !strings.Contains(body, "n1") {
		t.Errorf("dashboard with the root token: HTTP %d", code)
	}
	for _, good := range []string{root, "Basic " + base64.StdEncoding.EncodeToString([]byte(":s3cret"))} {
		if code, body := authCall(t, "GET", base+"/api/v1/status", good, ""); code != 200 || !strings.Contains(body, `"status":"OK"`) {
			t.Errorf("root token %q: HTTP %d %s", good, code, body)
		}
	}

	// An API key made with the CLI, used as CI plugins use it.
	bin := corralBinary(t)
	keyFile := filepath.Join(t.TempDir(), "ci.pem")
	if out, err := exec.Command(bin, "apikey", "create", "jenkins", "--private-key", keyFile, "--etcd-endpoints", c.Etcd.ClientURL).CombinedOutput(); err != nil {
		t.Fatalf("apikey create: %v %s", err, out)
	}
	data, _ := readFile(t, keyFile)
	block, _ := pem.Decode(data)
	priv, err := x509.ParsePKCS1PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	bearer, shakeBody := loginWithAPIKey(t, base, "jenkins", priv)
	ids := ""
	if code, body := authCall(t, "POST", base+"/api/v1/vm", bearer, `{"vmid":"`+c.TemplateID+`"}`); code != 200 || !strings.Contains(body, `"OK"`) {
		t.Fatalf("start with API-key session: %d %s", code, body)
	} else {
		var env struct{ Body []string }
		json.Unmarshal([]byte(body), &env)
		ids = env.Body[0]
	}
	// The secret is single-use; an unknown key gets nothing.
	if code, _ := authCall(t, "POST", base+"/tap/v1/shake", "", shakeBody); code != 401 {
		t.Errorf("replayed shake: HTTP %d", code)
	}
	if code, _ := authCall(t, "POST", base+"/tap/v1/hand", "", `{"id":"nobody"}`); code != 401 {
		t.Errorf("hand for unknown key: HTTP %d", code)
	}
	// Nodes use their join token, unaffected: the instance starts.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, body := authCall(t, "GET", base+"/api/v1/vm?id="+ids, root, "")
		if strings.Contains(body, `"instance_state":"`+apiv1.StateStarted+`"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance never started with auth on: %s", body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// loginWithAPIKey does what CI plugins do with an API key: hand, decrypt the
// secret, shake. It returns the Authorization header and the shake body.
// loginNewKey creates API key id in the store and logs in with it,
// returning the bearer header.
func loginNewKey(t *testing.T, st *store.Store, base, id string) string {
	t.Helper()
	bearer, _ := loginWithAPIKey(t, base, id, testenv.NewAPIKey(t, st, id))
	return bearer
}

func loginWithAPIKey(t *testing.T, base, id string, priv *rsa.PrivateKey) (string, string) {
	t.Helper()
	code, hand := authCall(t, "POST", base+"/tap/v1/hand", "", `{"id":"`+id+`"}`)
	if code != 200 {
		t.Fatalf("hand: %d %s", code, hand)
	}
	enc, _ := base64.StdEncoding.DecodeString(hand)
	secret, err := rsa.DecryptOAEP(sha256.New(), rand.Reader, priv, enc, nil)
	if err != nil {
		t.Fatalf("decrypt hand secret: %v", err)
	}
	shakeBody := `{"id":"` + id + `","secret":"` + string(secret) + `"}`
	code, shake := authCall(t, "POST", base+"/tap/v1/shake", "", shakeBody)
	var resp struct {
		ID   string          `json:"id"`
		Data json.RawMessage `json:"data"`
	}
	if code != 200 || json.Unmarshal([]byte(shake), &resp) != nil || resp.ID != id {
		t.Fatalf("shake: %d %s", code, shake)
	}
	return "Bearer " + base64.StdEncoding.EncodeToString(resp.Data), shakeBody
}

// TestDeletedAPIKeyStopsAtOnce: deleting an API key ends its sessions at
// once (they used to stay valid for up to an hour), and etcd holds only
// hashes of session tokens, nothing usable as a credential.
func TestDeletedAPIKeyStopsAtOnce(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Auth: controller.AuthConfig{Enabled: true, RootToken: "s3cret", APIKeys: true}})
	base := c.Controllers[0].URL
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.Etcd.ClientURL}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	st := store.New(cli, "")
	bearer := loginNewKey(t, st, base, "ci")
	if code, body := authCall(t, "GET", base+"/api/v1/vm", bearer, ""); code != 200 {
		t.Fatalf("with a fresh session: HTTP %d %s", code, body)
	}

	// Nothing in etcd is the token the client holds.
	raw, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(bearer, "Bearer "))
	var sess struct{ Token string }
	json.Unmarshal(raw, &sess)
	resp, err := cli.Get(context.Background(), "/corral/auth/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("no session stored: %v", err)
	}
	for _, kv := range resp.Kvs {
		if sess.Token == "" || strings.Contains(string(kv.Value), sess.Token) || strings.Contains(string(kv.Key), sess.Token) {
			t.Fatalf("etcd holds the session token in the clear at %s", kv.Key)
		}
	}

	if err := st.DeleteAPIKey(context.Background(), "ci"); err != nil {
		t.Fatal(err)
	}
	if code, body := authCall(t, "GET", base+"/api/v1/vm", bearer, ""); code != 401 {
		t.Fatalf("after deleting the key: HTTP %d %s, want 401", code, body)
	}
}

// TestNodeCredentials: the join token only joins; every later agent call
// needs the node's own credential, and a node reads and updates only its
// own assignments and instances. (With the join token anyone could read
// every node's assignments, startup scripts included, and set any
// instance's state.)
func TestNodeCredentials(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Nodes: []testenv.NodeOptions{{Name: "a", Capacity: 2}, {Name: "b", Capacity: 2}}})
	base := c.Controllers[0].URL
	ctx := context.Background()
	ids, err := c.Client.StartInstances(ctx, map[string]any{"vmid": c.TemplateID, "count": 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		c.WaitState(id, apiv1.StateStarted, 10*time.Second)
	}
	nodes := c.Nodes()
	a, b := nodes[0].Agent.ID(), nodes[1].Agent.ID()

	// A third party with the join token joins as "mallory" and gets its own credential.
	joiner, _ := client.New([]string{base}, "test-token")
	resp, err := joiner.Join(ctx, apiv1.NodeReport{NodeID: "mallory", NodeName: "mallory", Capacity: 1})
	if err != nil || !strings.HasPrefix(resp.NodeToken, "mallory.") {
		t.Fatalf("join: %+v %v", resp, err)
	}
	mallory := "Bearer " + resp.NodeToken
	join := "Bearer test-token"
	for _, tc := range []struct {
		what, method, path, auth, body string
		code                           int
		msg                            string
	}{
		{"join token reads assignments", "GET", "/api/v1/agent/assignments?node_id=" + a, join, "", 401, apiv1.MsgAuthRequired},
		{"join token heartbeats", "POST", "/api/v1/agent/heartbeat", join, `{"node_id":"` + a + `"}`, 401, apiv1.MsgAuthRequired},
		{"another node's assignments", "GET", "/api/v1/agent/assignments?node_id=" + a, mallory, "", 403,
			"Permission denied: node mallory may act only for itself, not for node " + a},
		{"another node's instances", "POST", "/api/v1/agent/status", mallory,
			`{"node_id":"` + a + `","instances":[{"instance_id":"` + ids[0] + `","state":"Terminated"}]}`, 403,
			"Permission denied: node mallory may act only for itself, not for node " + a},
		{"another node's report", "POST", "/api/v1/agent/report", mallory, `{"node_id":"` + b + `","node_name":"b"}`, 403,
			"Permission denied: node mallory may act only for itself, not for node " + b},
		{"a forged credential", "GET", "/api/v1/agent/assignments?node_id=" + a, "Bearer " + a + ".00ff", "", 401, apiv1.MsgAuthRequired},
	} {
		code, body := authCall(t, tc.method, base+tc.path, tc.auth, tc.body)
		var env struct{ Status, Message string }
		json.Unmarshal([]byte(body), &env)
		if code != tc.code || env.Status != "FAIL" || env.Message != tc.msg {
			t.Errorf("%s: HTTP %d %s %q, want %d FAIL %q", tc.what, code, env.Status, env.Message, tc.code, tc.msg)
		}
	}
	// Its own calls work.
	if code, body := authCall(t, "GET", base+"/api/v1/agent/assignments?node_id=mallory", mallory, ""); code != 200 {
		t.Errorf("own assignments: HTTP %d %s", code, body)
	}
	// Nothing changed for the real instances.
	for _, id := range ids {
		if in, _ := c.Client.Instance(ctx, id); in.State != apiv1.StateStarted {
			t.Errorf("instance %s is %s after the attempts", id, in.State)
		}
	}
	// The credential is stored hashed.
	cli, _ := clientv3.New(clientv3.Config{Endpoints: []string{c.Etcd.ClientURL}})
	defer cli.Close()
	kv, _ := cli.Get(ctx, "/corral/nodes/mallory")
	if len(kv.Kvs) == 0 || strings.Contains(string(kv.Kvs[0].Value), strings.TrimPrefix(resp.NodeToken, "mallory.")) {
		t.Errorf("node record missing or holding the credential in the clear")
	}
}
