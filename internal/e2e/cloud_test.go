package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/testenv"
)

// TestStartTwentyAcrossGroups is the vertical slice end to end: two nodes in
// two groups, 20 instances with mixed priorities, all Started on the right
// nodes, then list filters, update, terminate and unknown ids.
func TestStartTwentyAcrossGroups(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Nodes: []testenv.NodeOptions{
		{Name: "mac-a", Capacity: 10, Groups: []string{"group-a"}},
		{Name: "mac-b", Capacity: 10, Groups: []string{"group-b"}},
	}})
	base := c.Controllers[0].URL + "/api/v1"
	groups := map[string]string{} // name -> id
	for _, g := range ok(t, "GET", base+"/group", "").([]any) {
		gm := g.(map[string]any)
		groups[gm["name"].(string)] = gm["id"].(string)
	}
	nodeOf := map[string]string{} // node name -> id
	for _, n := range ok(t, "GET", base+"/node", "").([]any) {
		nm := n.(map[string]any)
		nodeOf[nm["node_name"].(string)] = nm["node_id"].(string)
	}

	ids := map[string][]string{}
	for _, g := range []string{"group-a", "group-b"} {
		for _, prio := range []int{1, 5000} {
			body := mustJSON(map[string]any{"vmid": c.TemplateID, "count": 5, "group_id": groups[g],
				"priority": prio, "external_id": g})
			for _, id := range ok(t, "POST", base+"/vm", body).([]any) {
				ids[g] = append(ids[g], id.(string))
			}
		}
	}
	for g, list := range ids {
		if len(list) != 10 {
			t.Fatalf("%s: got %d ids, want 10", g, len(list))
		}
		want := nodeOf["mac-a"]
		if g == "group-b" {
			want = nodeOf["mac-b"]
		}
		for _, id := range list {
			in := c.WaitState(id, apiv1.StateStarted, 15*time.Second)
			if in.NodeID != want {
				t.Errorf("instance %s of %s placed on %s, want %s", id, g, in.NodeID, want)
			}
			if in.VMInfo == nil || in.VMInfo.PortForwarding[0].GuestPort != 22 || in.VMInfo.HostIP == "" {
				t.Errorf("instance %s: want an SSH port forward first, got %+v", id, in.VMInfo)
			}
		}
	}

	// Filters.
	count := func(query string) int { return len(ok(t, "GET", base+"/vm?"+query, "").([]any)) }
	if n := count("state=Started"); n != 20 {
		t.Errorf("state=Started: %d, want 20", n)
	}
	if n := count("group_id=" + groups["group-a"]); n != 10 {
		t.Errorf("group_id filter: %d, want 10", n)
	}
	if n := count("node_id=" + nodeOf["mac-b"]); n != 10 {
		t.Errorf("node_id filter: %d, want 10", n)
	}
	if n := count("external_id=group-b"); n != 10 {
		t.Errorf("external_id filter: %d, want 10", n)
	}
	fail(t, "GET", base+"/vm?state=Running", "", 200, `state: unknown state "Running" (one of `+strings.Join(apiv1.InstanceStates, ", ")+")")

	// Update.
	first := ids["group-a"][0]
	ok(t, "PUT", base+"/vm?id="+first, `{"external_id":"job-42","name":"build-1","metadata":{"branch":"main"}}`)
	got := ok(t, "GET", base+"/vm?id="+first, "").(map[string]any)
	if got["external_id"] != "job-42" || got["name"] != "build-1" || got["metadata"].(map[string]any)["branch"] != "main" {
		t.Errorf("after update: %v", got)
	}
	if n := count("external_id=job-42"); n != 1 {
		t.Errorf("external_id=job-42: %d, want 1", n)
	}

	// Terminate.
	ok(t, "DELETE", base+"/vm", `{"id":"`+first+`"}`)
	c.WaitState(first, apiv1.StateTerminated, 10*time.Second)
	node := c.WaitNodeState(nodeOf["mac-a"], apiv1.NodeActive, time.Second)
	if node.VMCount != 9 {
		t.Errorf("mac-a vm_count after terminate: %d, want 9", node.VMCount)
	}

	// Unknown ids.
	fail(t, "GET", base+"/vm?id=no-such-instance", "", 200, apiv1.MsgNotFound)
	fail(t, "DELETE", base+"/vm", `{"id":"no-such-instance"}`, 200, apiv1.MsgNotFound)
	fail(t, "PUT", base+"/vm?id=no-such-instance", `{"name":"x"}`, 200, apiv1.MsgNotFound)
}

// TestPriorityFallbackAndReasons: waiting instances say why; a freed slot
// goes to the most urgent instance; an empty group falls back.
func TestPriorityFallbackAndReasons(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Nodes: []testenv.NodeOptions{{Name: "solo", Capacity: 1, Groups: []string{"small"}}}})
	ctx := context.Background()
	base := c.Controllers[0].URL + "/api/v1"
	nodes, _ := c.Client.Nodes(ctx)
	solo := nodes[0]
	small := solo.Groups[0].ID

	// An empty group falling back to "small".
	empty, err := c.Client.CreateGroup(ctx, "empty", "no nodes", small)
	if err != nil {
		t.Fatal(err)
	}
	blocker := ok(t, "POST", base+"/vm", mustJSON(map[string]any{"vmid": c.TemplateID, "group_id": empty.ID})).([]any)[0].(string)
	c.WaitState(blocker, apiv1.StateStarted, 10*time.Second)

	low := ok(t, "POST", base+"/vm", mustJSON(map[string]any{"vmid": c.TemplateID, "priority": "9000"})).([]any)[0].(string)
	high := ok(t, "POST", base+"/vm", mustJSON(map[string]any{"vmid": c.TemplateID, "priority": 2})).([]any)[0].(string)
	// Created one after the other: low is the older (checked, not slept for).
	lowIn, _ := c.Client.Instance(ctx, low)
	highIn, _ := c.Client.Instance(ctx, high)
	if !lowIn.CrTime.Before(highIn.CrTime) {
		t.Fatalf("low was created at %v, high at %v: the test needs low older", lowIn.CrTime, highIn.CrTime)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		in, _ := c.Client.Instance(ctx, high)
		if in.Message == "the only active node is at capacity" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting instance reason: %q", in.Message)
		}
		time.Sleep(50 * time.Millisecond)
	}
	inEmpty := ok(t, "POST", base+"/vm", mustJSON(map[string]any{"vmid": c.TemplateID, "group_id": empty.ID, "priority": 9999})).([]any)[0].(string)
	waitMessage(t, c, inEmpty, "no active node in group empty; the only active node in group small is at capacity")

	// Free the slot: the urgent one must win although it is younger.
	if err := c.Client.Terminate(ctx, blocker); err != nil {
		t.Fatal(err)
	}
	c.WaitState(high, apiv1.StateStarted, 10*time.Second)
	if in, _ := c.Client.Instance(ctx, low); in.State != apiv1.StateScheduling {
		t.Fatalf("low-priority instance is %s, want Scheduling", in.State)
	}

	// Drain mode: no new placements; listed as "Drain Mode".
	ok(t, "POST", base+"/node/config", mustJSON(map[string]any{"node_id": solo.NodeID, "drain_mode": true}))
	c.WaitNodeState(solo.NodeID, apiv1.NodeDrain, 5*time.Second)
	_ = c.Client.Terminate(ctx, high)
	waitMessage(t, c, low, "no active node")
	ok(t, "PUT", base+"/node/config", mustJSON(map[string]any{"node_id": solo.NodeID, "drain_mode": false, "capacity": "3"}))
	c.WaitState(low, apiv1.StateStarted, 10*time.Second)
	c.WaitState(inEmpty, apiv1.StateStarted, 10*time.Second)
	// max_vm_count is the reference's name for capacity.
	ok(t, "POST", base+"/node/config", mustJSON(map[string]any{"node_id": solo.NodeID, "max_vm_count": 5, "capacity_mode": "number"}))
	if n := ok(t, "GET", base+"/node?id="+solo.NodeID, "").([]any)[0].(map[string]any); n["capacity"] != 5.0 {
		t.Fatalf("capacity after max_vm_count 5: %v", n["capacity"])
	}
	if usb := ok(t, "GET", base+"/usb", "").(map[string]any); len(usb) != 0 {
		t.Fatalf("usb %v", usb)
	}
	if vlans := ok(t, "GET", base+"/vlan", "").([]any); len(vlans) != 0 {
		t.Fatalf("vlan %v", vlans)
	}
}

func waitMessage(t *testing.T, c *testenv.Cluster, id, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		in, _ := c.Client.Instance(context.Background(), id)
		if in.Message == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance %s: message %q, want %q", id, in.Message, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestConcurrentStartsNeverOvercommit hammers one small node from many
// clients at once: capacity must hold at every moment.
func TestConcurrentStartsNeverOvercommit(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Controllers: 2, Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 3}}})
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			url := c.Controllers[i%2].URL + "/api/v1/vm"
			ok(t, "POST", url, fmt.Sprintf(`{"vmid":%q,"count":2}`, c.TemplateID))
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		started := len(ok(t, "GET", c.Controllers[0].URL+"/api/v1/vm?state=Started", "").([]any))
		if started > 3 {
			t.Fatalf("%d instances Started on a node with capacity 3", started)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if started := len(ok(t, "GET", c.Controllers[0].URL+"/api/v1/vm?state=Started", "").([]any)); started != 3 {
		t.Fatalf("%d Started, want 3 (capacity)", started)
	}
}

// TestGroupMembershipAndDisjoin: nodes leave groups, and a disjoined node's
// agent stops and its instances are released.
func TestGroupMembershipAndDisjoin(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 2, Groups: []string{"g"}}}})
	base := c.Controllers[0].URL + "/api/v1"
	nodes := ok(t, "GET", base+"/node", "").([]any)
	n := nodes[0].(map[string]any)
	id := n["node_id"].(string)
	gid := n["groups"].([]any)[0].(map[string]any)["id"].(string)

	ok(t, "DELETE", base+"/node/group/"+gid, `{"node_ids":["`+id+`"]}`)
	if gs := ok(t, "GET", base+"/node?id="+id, "").([]any)[0].(map[string]any)["groups"].([]any); len(gs) != 0 {
		t.Fatalf("node still in groups %v", gs)
	}
	ok(t, "POST", base+"/node/group/"+gid, `{"node_ids":["`+id+`"]}`)
	fail(t, "POST", base+"/node/group/"+gid, `{"node_ids":["nope"]}`, 200, `node_ids: no node with id "nope"`)

	// The body form: node_id or node_ids, and group_ids.
	g2 := ok(t, "POST", base+"/group", `{"name":"second"}`).(map[string]any)["id"].(string)
	groupsOf := func() int {
		return len(ok(t, "GET", base+"/node?id="+id, "").([]any)[0].(map[string]any)["groups"].([]any))
	}
	ok(t, "DELETE", base+"/node/group", `{"node_id":"`+id+`","group_ids":["`+gid+`"]}`)
	if n := groupsOf(); n != 0 {
		t.Fatalf("after DELETE /node/group: in %d groups", n)
	}
	ok(t, "POST", base+"/node/group", `{"node_ids":["`+id+`"],"group_ids":["`+gid+`","`+g2+`"]}`)
	if n := groupsOf(); n != 2 {
		t.Fatalf("after POST /node/group: in %d groups, want 2", n)
	}
	ok(t, "DELETE", base+"/node/group", `{"node_ids":["`+id+`"],"group_ids":["`+g2+`"]}`)
	fail(t, "POST", base+"/node/group", `{"node_id":"`+id+`","group_ids":["nope"]}`, 200, `group_ids: no group with id "nope"`)
	fail(t, "POST", base+"/node/group", `{"node_id":"`+id+`"}`, 200, `group_ids: required: a list of group ids`)
	fail(t, "POST", base+"/node/group", `{"group_ids":["`+gid+`"]}`, 200, `node_ids: required: node_id or a list of node ids`)
	if n := groupsOf(); n != 1 {
		t.Fatalf("after the refusals: in %d groups, want 1", n)
	}

	inst := ok(t, "POST", base+"/vm", `{"vmid":"`+c.TemplateID+`","group_id":"`+gid+`"}`).([]any)[0].(string)
	c.WaitState(inst, apiv1.StateStarted, 10*time.Second)

	ok(t, "DELETE", base+"/node", `{"node_id":"`+id+`"}`)
	in := c.WaitState(inst, apiv1.StateError, 10*time.Second)
	if !strings.Contains(in.Message, "removed from the cloud") {
		t.Errorf("message %q", in.Message)
	}
	fail(t, "GET", base+"/node?id="+id, "", 200, apiv1.MsgNotFound)
	fail(t, "DELETE", base+"/node", `{"node_id":"`+id+`"}`, 200, apiv1.MsgNotFound)
}
