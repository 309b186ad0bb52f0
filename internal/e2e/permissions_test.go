package e2e

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/store"
	"github.com/corral-build/corral/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestPermissionGroups: API keys bound to a permission group can do what it
// grants and get HTTP 403 naming the missing permission otherwise; unbound
// keys keep every permission unless a default group is configured, and a
// missing default group grants nothing.
func TestPermissionGroups(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Auth: controller.AuthConfig{Enabled: true, RootToken: "s3cret", APIKeys: true},
		Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 10}}})
	base := c.Controllers[0].URL
	root := "Basic " + base64.StdEncoding.EncodeToString([]byte("root:s3cret"))
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.Etcd.ClientURL}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	login := func(base, id string) string { return loginNewKey(t, store.New(cli, ""), base, id) }
	type call struct{ method, path, auth, body string }
	// expect checks the whole answer: HTTP code, envelope status and the
	// exact message (wantMsg "OK" means an OK envelope with no message).
	expect := func(wantCode int, wantMsg string, calls ...call) {
		t.Helper()
		wantStatus := "FAIL"
		if wantMsg == "OK" {
			wantStatus, wantMsg = "OK", ""
		}
		for _, cl := range calls {
			code, body := authCall(t, cl.method, base+cl.path, cl.auth, cl.body)
			var env struct{ Status, Message string }
			if err := json.Unmarshal([]byte(body), &env); err != nil {
				t.Errorf("%s %s: HTTP %d, not an envelope: %s", cl.method, cl.path, code, body)
				continue
			}
			if code != wantCode || env.Status != wantStatus || env.Message != wantMsg {
				t.Errorf("%s %s: HTTP %d %s %q, want %d %s %q", cl.method, cl.path, code, env.Status, env.Message, wantCode, wantStatus, wantMsg)
			}
		}
	}
	start := func(auth string) string {
		t.Helper()
		code, body := authCall(t, "POST", base+"/api/v1/vm", auth, `{"vmid":"`+c.TemplateID+`"}`)
		var env struct {
			Status string
			Body   []string
		}
		if code != 200 || json.Unmarshal([]byte(body), &env) != nil || env.Status != "OK" {
			t.Fatalf("start: HTTP %d %s", code, body)
		}
		return env.Body[0]
	}

	jenkins := login(base, "jenkins")
	expect(200, "OK", call{"POST", "/api/v1/permission-group", root,
		`{"name":"ci","description":"CI jobs","permissions":["view","start_instances"],"members":["key:jenkins"]}`})
	expect(200, `name: a permission group named "ci" exists`, call{"POST", "/api/v1/permission-group", root, `{"name":"ci"}`})
	expect(200, `permissions: unknown permission "fly" (want view, start_instances, terminate_instances, manage_nodes, manage_templates, admin)`, call{"POST", "/api/v1/permission-group", root, `{"name":"x","permissions":["fly"]}`})
	expect(200, `members: "user:bob": want key:<api key id>, cert:<common name> or cert-group:<organization>`, call{"POST", "/api/v1/permission-group", root, `{"name":"x","members":["user:bob"]}`})
	expect(200, `name: want 1-64 letters, digits, '.', '_' or '-', got "../etc"`, call{"POST", "/api/v1/permission-group", root, `{"name":"../etc"}`})
	expect(200, `Not found`, call{"PUT", "/api/v1/permission-group", root, `{"name":"nope"}`})

	// What "ci" grants works; the rest is 403 naming the permission.
	id := start(jenkins)
	expect(200, "OK", call{"GET", "/api/v1/vm?id=" + id, jenkins, ""}, call{"GET", "/api/v1/node", jenkins, ""},
		call{"PUT", "/api/v1/vm?id=" + id, jenkins, `{"external_id":"job-1"}`})
	expect(403, `Permission denied: key:jenkins does not have the terminate_instances permission`,
		call{"DELETE", "/api/v1/vm", jenkins, `{"id":"` + id + `"}`})
	expect(403, `Permission denied: key:jenkins does not have the manage_nodes permission`, call{"DELETE", "/api/v1/node", jenkins, `{"node_id":"x"}`},
		call{"POST", "/api/v1/group", jenkins, `{"name":"g"}`})
	expect(403, `Permission denied: key:jenkins does not have the manage_templates permission`, call{"DELETE", "/api/v1/registry/vm?id=" + c.TemplateID, jenkins, ""})
	expect(403, `Permission denied: key:jenkins does not have the admin permission`, call{"GET", "/api/v1/permission-group", jenkins, ""},
		call{"POST", "/api/v1/permission-group", jenkins, `{"name":"mine","permissions":["admin"],"members":["key:jenkins"]}`})
	if code, page := authCall(t, "GET", base+"/", jenkins, ""); code != 200 || !strings.Contains(page, ">n1<") {
		t.Errorf("dashboard with view: HTTP %d", code) // the dashboard needs view
	}

	// Replacing the group takes effect on the next request.
	expect(200, "OK", call{"PUT", "/api/v1/permission-group", root,
		`{"name":"ci","permissions":["view","start_instances","terminate_instances"],"members":["key:jenkins"]}`})
	expect(200, "OK", call{"DELETE", "/api/v1/vm", jenkins, `{"id":"` + id + `"}`})

	// A key no group names may do everything, as before groups existed.
	other := login(base, "other")
	expect(200, "OK", call{"DELETE", "/api/v1/vm", other, `{"id":"` + start(other) + `"}`})

	// With a default group, unbound keys get only that; a missing default
	// group grants nothing (fail closed).
	locked := c.StartController(testenv.Options{Auth: controller.AuthConfig{Enabled: true, RootToken: "s3cret", APIKeys: true,
		DefaultPermissionGroup: "readonly"}})
	base = locked.URL
	other = login(base, "other")
	expect(403, `Permission denied: key:other does not have the view permission`, call{"GET", "/api/v1/vm", other, ""})
	expect(200, "OK", call{"POST", "/api/v1/permission-group", root, `{"name":"readonly","permissions":["view"]}`})
	expect(200, "OK", call{"GET", "/api/v1/vm", other, ""})
	expect(403, `Permission denied: key:other does not have the start_instances permission`, call{"POST", "/api/v1/vm", other, `{"vmid":"` + c.TemplateID + `"}`})
	expect(200, "OK", call{"POST", "/api/v1/vm", jenkins, `{"vmid":"` + c.TemplateID + `"}`}) // bound: "ci" applies

	code, body := authCall(t, "GET", base+"/api/v1/permission-group", root, "")
	if code != 200 || !strings.Contains(body, `"name":"ci","description":"","permissions":["view","start_instances","terminate_instances"],"members":["key:jenkins"]`) ||
		!strings.Contains(body, `"members":[]`) {
		t.Errorf("list: HTTP %d %s", code, body)
	}
	expect(200, "OK", call{"DELETE", "/api/v1/permission-group", root, `{"name":"ci"}`})
	expect(200, `Not found`, call{"DELETE", "/api/v1/permission-group", root, `{"name":"ci"}`})
	expect(403, `Permission denied: key:jenkins does not have the start_instances permission`, call{"POST", "/api/v1/vm", jenkins, `{"vmid":"` + c.TemplateID + `"}`}) // now unbound: readonly
}
