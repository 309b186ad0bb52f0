package e2e

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/testenv"
)

// TestDistribute: a template is pre-pulled to nodes (one group, then all),
// and each node's outcome is reported.
func TestDistribute(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Registry: true, Nodes: []testenv.NodeOptions{
		{Name: "a", Capacity: 1, Groups: []string{"fast"}}, {Name: "b", Capacity: 1}}})
	rc, _ := client.NewRegistry(c.Registry.URL)
	src := newVMDir(t, 0, 1)
	os.WriteFile(filepath.Join(src, "config.json"), []byte(fmt.Sprintf(`{"arch":%q}`, runtimeArch())), 0o644)
	res, err := rc.Push(context.Background(), client.PushOptions{Source: src, Template: "warm", Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	base := c.Controllers[0].URL + "/api/v1"
	fail(t, "POST", base+"/registry/vm/distribute", `{"template_id":"nope"}`, 200, apiv1.MsgNotInRegistry)
	fail(t, "POST", base+"/registry/vm/distribute", `{"template_id":"`+res.TemplateID+`","tag":"v9"}`, 200, "No such tag v9")
	fail(t, "POST", base+"/registry/vm/distribute", `{"template_id":"`+res.TemplateID+`","node_ids":["x"]}`, 200, `node_ids: no node with id "x"`)
	fail(t, "GET", base+"/registry/vm/distribute?id=nope", "", 200, apiv1.MsgNotFound)

	var fast string
	for _, n := range ok(t, "GET", base+"/node", "").([]any) {
		for _, g := range n.(map[string]any)["groups"].([]any) {
			fast = g.(map[string]any)["id"].(string)
		}
	}
	req := ok(t, "POST", base+"/registry/vm/distribute", `{"template_id":"`+res.TemplateID+`","group_id":"`+fast+`"}`).(map[string]any)["request_id"].(string)
	waitDistributed(t, base, req, 1)
	// Nodes report held templates asynchronously: wait for node a's report.
	for deadline := time.Now().Add(time.Minute); heldTemplates(t, base) != 1; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after distributing to group fast, %d nodes hold the template, want 1", heldTemplates(t, base))
		}
	}
	req = ok(t, "POST", base+"/registry/vm/distribute", `{"template_id":"`+res.TemplateID+`"}`).(map[string]any)["request_id"].(string)
	waitDistributed(t, base, req, 2)
	deadline := time.Now().Add(5 * time.Second)
	for heldTemplates(t, base) != 2 {
		if time.Now().After(deadline) {
			t.Fatal("not every node holds the distributed template")
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The reference's shape of ?id=, the list, and cancelling.
	d := ok(t, "GET", base+"/registry/vm/distribute?id="+req, "").(map[string]any)
	r := d["request"].(map[string]any)
	if r["request_id"] != req || r["template_id"] != res.TemplateID || r["time_requested"] == "" {
		t.Fatalf("request %v", r)
	}
	for node, st := range d["distribute_status"].(map[string]any) {
		if m := st.(map[string]any); m["status"] != true || m["progress"] != 1.0 {
			t.Fatalf("node %s: %v", node, m)
		}
	}
	if list := ok(t, "GET", base+"/registry/vm/distribute", "").([]any); len(list) != 2 {
		t.Fatalf("list of distributions: %d, want 2", len(list))
	}
	ok(t, "DELETE", base+"/registry/vm/distribute?id="+req, "")
	fail(t, "GET", base+"/registry/vm/distribute?id="+req, "", 200, apiv1.MsgNotFound)
	fail(t, "DELETE", base+"/registry/vm/distribute", `{"id":"`+req+`"}`, 200, apiv1.MsgNotFound)
	if list := ok(t, "GET", base+"/registry/vm/distribute", "").([]any); len(list) != 1 {
		t.Fatalf("after cancelling one: %d, want 1", len(list))
	}
}

func heldTemplates(t *testing.T, base string) int {
	held := 0
	for _, n := range ok(t, "GET", base+"/node", "").([]any) {
		held += len(n.(map[string]any)["templates"].([]any))
	}
	return held
}

func waitDistributed(t *testing.T, base, req string, nodes int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		d := ok(t, "GET", base+"/registry/vm/distribute?id="+req, "").(map[string]any)
		got := d["nodes"].(map[string]any)
		done := 0
		for _, outcome := range got {
			if outcome == "done" {
				done++
			}
		}
		if len(got) == nodes && done == nodes {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("distribution %s: %v", req, got)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestPullFailureReplaces: a pull that fails on one node places the instance
// on another (Pulling -> Scheduling); when every node failed, it is Error
// with the reason.
func TestPullFailureReplaces(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Registry: true, Nodes: []testenv.NodeOptions{
		{Name: "a", Capacity: 1}, {Name: "b", Capacity: 1}}})
	rc, _ := client.NewRegistry(c.Registry.URL)
	src := newVMDir(t, 0)
	os.WriteFile(filepath.Join(src, "config.json"), []byte(fmt.Sprintf(`{"arch":%q}`, runtimeArch())), 0o644)
	res, err := rc.Push(context.Background(), client.PushOptions{Source: src, Template: "broken", Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	// Damage every chunk in the registry's store: every pull fails verification.
	damagePacks(t, filepath.Join(c.Dir, "registry"))
	base := c.Controllers[0].URL + "/api/v1"
	id := ok(t, "POST", base+"/vm", `{"vmid":"`+res.TemplateID+`"}`).([]any)[0].(string)
	in := c.WaitState(id, apiv1.StateError, 20*time.Second)
	tried := strings.HasPrefix(in.Message, "failed on every eligible node (a, b): ") ||
		strings.HasPrefix(in.Message, "failed on every eligible node (b, a): ")
	if !tried || !strings.Contains(in.Message, "damaged") {
		t.Fatalf("message %q", in.Message)
	}
	for _, n := range ok(t, "GET", base+"/node", "").([]any) {
		if vms := n.(map[string]any)["vm_count"].(float64); vms != 0 {
			t.Errorf("node %v still holds %v slots", n.(map[string]any)["node_name"], vms)
		}
	}
}

// TestRemoveFromNodes: DELETE /api/v1/registry/vm/remove deletes a template
// from the caches of the nodes that hold it (it answered Not found); a node
// keeps a tag an instance uses and says so.
func TestRemoveFromNodes(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Registry: true, Nodes: []testenv.NodeOptions{
		{Name: "a", Capacity: 1}, {Name: "b", Capacity: 1}}})
	rc, _ := client.NewRegistry(c.Registry.URL)
	src := newVMDir(t, 0, 1)
	os.WriteFile(filepath.Join(src, "config.json"), []byte(fmt.Sprintf(`{"arch":%q}`, runtimeArch())), 0o644)
	res, err := rc.Push(context.Background(), client.PushOptions{Source: src, Template: "cached", Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	base := c.Controllers[0].URL + "/api/v1"
	req := ok(t, "POST", base+"/registry/vm/distribute", `{"template_id":"`+res.TemplateID+`"}`).(map[string]any)["request_id"].(string)
	waitDistributed(t, base, req, 2)
	for deadline := time.Now().Add(time.Minute); heldTemplates(t, base) != 2; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("not distributed")
		}
	}
	inst := ok(t, "POST", base+"/vm", `{"vmid":"`+res.TemplateID+`"}`).([]any)[0].(string)
	busy := c.WaitState(inst, apiv1.StateStarted, 10*time.Second).NodeID

	if got := ok(t, "DELETE", base+"/registry/vm/remove?id=nope", "").(map[string]any); got["requests_sent"] != 0.0 {
		t.Fatalf("unknown template: %v", got)
	}
	got := ok(t, "DELETE", base+"/registry/vm/remove?id="+res.TemplateID, "").(map[string]any)
	if got["requests_sent"] != 2.0 || len(got["node_ids"].([]any)) != 2 {
		t.Fatalf("remove: %v", got)
	}
	rid := got["request_id"].(string)
	deadline := time.Now().Add(time.Minute)
	for {
		nodes := ok(t, "GET", base+"/registry/vm/distribute?id="+rid, "").(map[string]any)["nodes"].(map[string]any)
		// Both outcomes final (it stopped waiting while the idle node was
		// still pending and failed on a busy machine).
		if len(nodes) == 2 && !slices.Contains(slices.Collect(maps.Values(nodes)), any("pending")) {
			for id, outcome := range nodes {
				if id == busy && outcome != "error: kept tag v1: an instance on this node uses it" || id != busy && outcome != "done" {
					t.Fatalf("outcomes %v (busy %s)", nodes, busy)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("removal %v", nodes)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for deadline := time.Now().Add(time.Minute); heldTemplates(t, base) != 1; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after removal %d nodes hold the template, want 1 (the busy one)", heldTemplates(t, base))
		}
	}
}
