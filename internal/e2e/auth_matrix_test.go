package e2e

import (
	"context"
	"encoding/json"
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

// routeAccess is who may call each controller route: a user permission, or
// "node" (a node's own credential), "join" (the join token), "tap" (the API
// key handshake, open by design), "registry-token" (any user or node: the
// grant is narrowed to what the caller may do, TestRegistryTokenPermissions). A route the controller serves that is
// missing here fails TestAuthMatrix: a new route must say who may call it.
var routeAccess = map[string]string{
	"GET /api/v1/status":                    apiv1.PermView,
	"GET /api/v1/node":                      apiv1.PermView,
	"DELETE /api/v1/node":                   apiv1.PermManageNodes,
	"PUT /api/v1/node/config":               apiv1.PermManageNodes,
	"POST /api/v1/node/config":              apiv1.PermManageNodes,
	"POST /api/v1/node/group/{group_id}":    apiv1.PermManageNodes,
	"DELETE /api/v1/node/group/{group_id}":  apiv1.PermManageNodes,
	"POST /api/v1/node/group":               apiv1.PermManageNodes,
	"DELETE /api/v1/node/group":             apiv1.PermManageNodes,
	"GET /api/v1/usb":                       apiv1.PermView,
	"GET /api/v1/vlan":                      apiv1.PermView,
	"GET /api/v1/group":                     apiv1.PermView,
	"POST /api/v1/group":                    apiv1.PermManageNodes,
	"PUT /api/v1/group":                     apiv1.PermManageNodes,
	"DELETE /api/v1/group":                  apiv1.PermManageNodes,
	"POST /api/v1/vm":                       apiv1.PermStartInstances,
	"GET /api/v1/vm":                        apiv1.PermView,
	"PUT /api/v1/vm":                        apiv1.PermStartInstances,
	"DELETE /api/v1/vm":                     apiv1.PermTerminateInstances,
	"POST /api/v1/rpc/vm/restart":           apiv1.PermStartInstances,
	"GET /api/v1/registry/vm":               apiv1.PermView,
	"DELETE /api/v1/registry/vm":            apiv1.PermManageTemplates,
	"DELETE /api/v1/registry/revert":        apiv1.PermManageTemplates,
	"GET /api/v1/registry/disk":             apiv1.PermView,
	"POST /api/v1/registry/vm/distribute":   apiv1.PermManageTemplates,
	"GET /api/v1/registry/vm/distribute":    apiv1.PermView,
	"DELETE /api/v1/registry/vm/distribute": apiv1.PermManageTemplates,
	"DELETE /api/v1/registry/vm/remove":     apiv1.PermManageTemplates,
	"GET /api/v1/permission-group":          apiv1.PermAdmin,
	"POST /api/v1/permission-group":         apiv1.PermAdmin,
	"PUT /api/v1/permission-group":          apiv1.PermAdmin,
	"DELETE /api/v1/permission-group":       apiv1.PermAdmin,
	"POST /api/v1/agent/join":               "join",
	"POST /api/v1/agent/heartbeat":          "node",
	"POST /api/v1/agent/leave":              "node",
	"POST /api/v1/agent/report":             "node",
	"POST /api/v1/agent/status":             "node",
	"GET /api/v1/agent/assignments":         "node",
	"POST /api/v1/agent/prefetch":           "node",
	"POST /api/v1/agent/image":              "node",
	"GET /api/v1/registry/token":            "registry-token",
	"POST /api/v1/join-token":               apiv1.PermAdmin,
	"POST /tap/v1/hand":                     "tap",
	"POST /tap/v1/shake":                    "tap",
	"POST /api/v1/image":                    apiv1.PermManageTemplates,
	"GET /api/v1/image":                     apiv1.PermView,
	"GET /api/v1/events":                    apiv1.PermView,
	"GET /api/v1/vm/logs":                   apiv1.PermView,
}

// TestAuthMatrix calls every route of the controller's route table with
// every kind of caller and checks who gets in: nobody, a wrong password, a
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

	patterns := httpapi.Patterns()
	for _, p := range patterns {
		if _, ok := routeAccess[p]; !ok {
			t.Errorf("route %q has no entry in routeAccess: say who may call it", p)
		}
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
	for _, p := range patterns {
		access := routeAccess[p]
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
		case "tap":
			continue // the handshake authenticates by its own protocol (tested in auth_test.go)
		case "join":
			check("nobody", "", false)
			check("root", root, false)
			check("a node credential", self, false)
			check("the join token", "Bearer test-token", true)
		case "registry-token":
			check("nobody", "", false)
			check("a wrong password", "Basic cm9vdDp3cm9uZw==", false)
			check("a deleted key", deleted, false)
			check("the join token", "Bearer test-token", false)
			check("a node credential", self, true)
			check("a key with only view", keys[apiv1.PermView], true)
			check("root", root, true)
		case "node":
			check("nobody", "", false)
			check("root", root, false)
			check("the join token", "Bearer test-token", false)
			check("another node", other, false)
			check("the node itself", self, true)
		default:
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
