package e2e

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/testenv"
)

// TestCLIInstances drives instances with `corral vm` as a user would,
// without curl: start and wait (SSH endpoint printed), list (table and
// JSON), show, terminate --all; errors exit non-zero with the reason.
func TestCLIInstances(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 4}}})
	ctl := c.Controllers[0].URL
	corral := func(wantOK bool, args ...string) string {
		t.Helper()
		cmd := exec.Command(corralBinary(t), append(args, "--controller", ctl)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr // warnings (CI's CORRAL_TEST_* variables) stay out of the output checked
		out, err := cmd.Output()
		if (err == nil) != wantOK {
			t.Fatalf("corral %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
		}
		if !wantOK {
			return stderr.String()
		}
		return string(out)
	}
	out := corral(true, "vm", "start", "--vmid", c.TemplateID, "--count", "2", "--wait")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 3 || !strings.Contains(out, "Started") || !strings.Contains(out, "127.0.0.1:") {
		t.Fatalf("start --wait printed %q", out)
	}
	var items []apiv1.InstanceListItem
	if err := json.Unmarshal([]byte(corral(true, "vm", "list", "--state", "Started", "--output", "json")), &items); err != nil || len(items) != 2 {
		t.Fatalf("list json: %v %+v", err, items)
	}
	if table := corral(true, "vm", "list"); !strings.Contains(table, items[0].InstanceID) || !strings.Contains(table, "INSTANCE") {
		t.Fatalf("list table %q", table)
	}
	if show := corral(true, "vm", "show", items[0].InstanceID); !strings.Contains(show, "Started") || !strings.Contains(show, "ssh") {
		t.Fatalf("show %q", show)
	}
	if msg := corral(false, "vm", "show", "nope"); !strings.Contains(msg, "Not found") {
		t.Fatalf("show unknown %q", msg)
	}
	if msg := corral(false, "vm", "start", "--vmid", "not-a-template"); !strings.Contains(msg, apiv1.MsgNotInRegistry) {
		t.Fatalf("start unknown %q", msg)
	}
	if got := corral(true, "vm", "terminate", "--all", "--state", "Started"); len(strings.Fields(got)) != 2 {
		t.Fatalf("terminate --all printed %q", got)
	}
	for _, it := range items {
		c.WaitState(it.InstanceID, apiv1.StateTerminated, 10*time.Second)
	}

	// Nodes and groups.
	var nodes []apiv1.Node
	if err := json.Unmarshal([]byte(corral(true, "node", "list", "--output", "json")), &nodes); err != nil || len(nodes) != 1 {
		t.Fatalf("node list: %v %+v", err, nodes)
	}
	id := nodes[0].NodeID
	if table := corral(true, "node", "list"); !strings.Contains(table, "n1") || !strings.Contains(table, "0/4") {
		t.Fatalf("node table %q", table)
	}
	corral(true, "node", "drain", id)
	c.WaitNodeState(id, apiv1.NodeDrain, 5*time.Second)
	corral(true, "node", "undrain", id)
	corral(true, "node", "set-capacity", id, "6")
	if show := corral(true, "node", "show", "n1"); !strings.Contains(show, `"capacity": 6`) || !strings.Contains(show, `"state": "Active"`) {
		t.Fatalf("node show %q", show)
	}
	gid := strings.TrimSpace(corral(true, "group", "create", "macs", "--description", "M2 minis"))
	corral(true, "group", "add", gid, id)
	if table := corral(true, "node", "list"); !strings.Contains(table, "macs") {
		t.Fatalf("node not in group: %q", table)
	}
	corral(true, "group", "remove", gid, id)
	if gl := corral(true, "group", "list"); !strings.Contains(gl, "M2 minis") {
		t.Fatalf("group list %q", gl)
	}
	corral(true, "group", "delete", gid)
	if msg := corral(false, "node", "set-capacity", id, "many"); !strings.Contains(msg, "non-negative") {
		t.Fatalf("bad capacity %q", msg)
	}
	corral(true, "node", "disjoin", id)
	if got := corral(true, "node", "list", "--output", "json"); strings.Contains(got, id) {
		t.Fatalf("disjoined node still listed: %s", got)
	}
}
