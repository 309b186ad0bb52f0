package e2e

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/controller/httpapi"
	"github.com/corral-build/corral/internal/store"
	"github.com/corral-build/corral/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestAuthMatrix calls every route of the controller's route table with
// every kind of caller and checks who gets in, against who the table says
// may call it (a user permission, or a node's credential, the join token,
// the handshake, any user or node for registry tokens): nobody, a wrong password, a
// deleted API key, a node's credential on a user route, a user on a node
// route, the join token beyond joining, another node's credential, a key
// missing the permission, and the right caller.
func TestAuthMatrix(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Auth: controller.AuthConfig{Enabled: true, RootToken: "s3cret", APIKeys: true}})
	base := c.Controllers[0].URL
	ctx := context.Background()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.Etcd.ClientURL}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	st := store.New(cli, "")
	login := func(id string) string { return loginNewKey(t, st, base, id) }
	root := "Basic cm9vdDpzM2NyZXQ=" // root:s3cret
	deleted := login("gone")
	if err := st.DeleteAPIKey(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	// One key per permission, each in a group granting only that one.
	perms := []string{apiv1.PermView, apiv1.PermStartInstances, apiv1.PermTerminateInstances,
		apiv1.PermManageNodes, apiv1.PermManageTemplates, apiv1.PermAdmin}
	keys := map[string]string{}
	for _, p := range perms {
		id := "only-" + strings.ReplaceAll(p, "_", "-")
		keys[p] = login(id)
		if code, body := authCall(t, "POST", base+"/api/v1/permission-group", root,
			`{"name":"`+id+`","permissions":["`+p+`"],"members":["key:`+id+`"]}`); code != 200 || !strings.Contains(body, `"OK"`) {
			t.Fatalf("group %s: %d %s", id, code, body)
		}
	}
	joiner, _ := client.New([]string{base}, "test-token")
	node := func(name string) string {
		resp, err := joiner.Join(ctx, apiv1.NodeReport{NodeID: name, NodeName: name, Capacity: 1})
		if err != nil {
			t.Fatal(err)
		}
		return "Bearer " + resp.NodeToken
	}
	self, other := node("matrix-self"), node("matrix-other")

	routes := httpapi.Routes()
	if len(routes) < 40 {
		t.Fatalf("%d routes in the table", len(routes))
	}
	status := func(pattern, auth string) (int, string) {
		method, path, _ := strings.Cut(pattern, " ")
		path = strings.ReplaceAll(path, "{group_id}", "g-none")
		body := `{}`
		if strings.HasPrefix(path, "/api/v1/agent/") {
			body = `{"node_id":"matrix-self","report":{"node_id":"matrix-self","node_name":"matrix-self"}}`
			if method == "GET" {
				path += "?node_id=matrix-self"
			}
		}
		if strings.HasSuffix(path, "/agent/join") { // a join re-issues the joining node's credential
			body = `{"report":{"node_id":"matrix-joiner","node_name":"matrix-joiner"}}`
		}
		code, text := authCall(t, method, base+path, auth, body)
		var env struct{ Message string }
		json.Unmarshal([]byte(text), &env)
		return code, env.Message
	}
	denied := func(code int) bool { return code == 401 || code == 403 }
	for _, rt := range routes {
		p, access := rt.Pattern, rt.Access
		check := func(who, auth string, wantIn bool) {
			t.Helper()
			code, msg := status(p, auth)
			if denied(code) == wantIn {
				t.Errorf("%s as %s: HTTP %d %q, want %s", p, who, code, msg, map[bool]string{true: "let in", false: "refused"}[wantIn])
			}
			if code >= 500 {
				t.Errorf("%s as %s: HTTP %d %q", p, who, code, msg)
			}
		}
		switch access {
		case httpapi.AccessTap:
			continue // the handshake authenticates by its own protocol (tested in auth_test.go)
		case httpapi.AccessJoin:
			check("nobody", "", false)
			check("root", root, false)
			check("a node credential", self, false)
			check("the join token", "Bearer test-token", true)
		case httpapi.AccessRegistryToken:
			check("nobody", "", false)
			check("a wrong password", "Basic cm9vdDp3cm9uZw==", false)
			check("a deleted key", deleted, false)
			check("the join token", "Bearer test-token", false)
			check("a node credential", self, true)
			check("a key with only view", keys[apiv1.PermView], true)
			check("root", root, true)
		case httpapi.AccessNode:
			check("nobody", "", false)
			check("root", root, false)
			check("the join token", "Bearer test-token", false)
			check("another node", other, false)
			check("the node itself", self, true)
		default:
			if !slices.Contains(perms, access) {
				t.Fatalf("%s: access %q is neither a permission nor a known kind", p, access)
			}
			check("nobody", "", false)
			check("a wrong password", "Basic cm9vdDp3cm9uZw==", false)
			check("a deleted key", deleted, false)
			check("a node credential", self, false)
			check("the join token", "Bearer test-token", false)
			for _, perm := range perms { // admin includes every permission
				check("a key with only "+perm, keys[perm], perm == access || perm == apiv1.PermAdmin)
			}
			check("root", root, true)
		}
	}
}
