package e2e

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/testenv"
)

// TestRestartInPlace: POST /api/v1/rpc/vm/restart stops and starts an
// instance's VM on its node: same id, same node, same slot, Started again
// with a new VM (its startup script ran again). Only Started instances.
func TestRestartInPlace(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 1}}})
	base := c.Controllers[0].URL + "/api/v1"
	script := base64.StdEncoding.EncodeToString([]byte("echo booted"))
	id := ok(t, "POST", base+"/vm", `{"vmid":"`+c.TemplateID+`","startup_script":"`+script+`","script_monitoring":true}`).([]any)[0].(string)
	before := c.WaitState(id, apiv1.StateStarted, 10*time.Second)
	ok(t, "POST", base+"/rpc/vm/restart", `{"instance_id":"`+id+`"}`)
	deadline := time.Now().Add(10 * time.Second)
	for {
		in := c.WaitState(id, apiv1.StateStarted, 10*time.Second)
		if in.VMInfo != nil && in.VMInfo.PortForwarding[0].HostPort != before.VMInfo.PortForwarding[0].HostPort && in.Message == "" {
			if in.NodeID != before.NodeID || in.StartupScript == nil || in.StartupScript.Stdout != "booted\n" {
				t.Fatalf("after restart %+v", in)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not restarted: %+v", in)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The slot stayed this instance's: a second one waits.
	other := ok(t, "POST", base+"/vm", `{"vmid":"`+c.TemplateID+`"}`).([]any)[0].(string)
	waitMessage(t, c, other, "the only active node is at capacity")
	fail(t, "POST", base+"/rpc/vm/restart", `{"instance_id":"`+other+`"}`, 200, "instance_id: only a Started instance can be restarted ("+other+" is Scheduling)")
	fail(t, "POST", base+"/rpc/vm/restart", `{"instance_id":"nope"}`, 200, apiv1.MsgNotFound)
	fail(t, "POST", base+"/rpc/vm/restart", `{}`, 200, "instance_id: required")
	ok(t, "DELETE", base+"/vm", `{"id":"`+id+`"}`)
	c.WaitState(id, apiv1.StateTerminated, 10*time.Second)
	c.WaitState(other, apiv1.StateStarted, 10*time.Second)
}

// TestNameTemplate: name_template expands every variable the reference
// documents; the node's once the instance is placed.
func TestNameTemplate(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Nodes: []testenv.NodeOptions{{Name: "mac-7", Capacity: 2}}})
	base := c.Controllers[0].URL + "/api/v1"
	ids := ok(t, "POST", base+"/vm", `{"vmid":"`+c.TemplateID+`","count":2,"name_template":"$template_name-$index-$node_name-$template_id-$instance_id-$node_id-$ts"}`).([]any)
	for i, id := range ids {
		in := c.WaitState(id.(string), apiv1.StateStarted, 10*time.Second)
		want := fmt.Sprintf("test-template-%d-mac-7-%s-%s-%s-", i, c.TemplateID, id, in.NodeID)
		if !strings.HasPrefix(in.Name, want) || strings.Contains(in.Name, "$") {
			t.Fatalf("name %q, want %s<ts>", in.Name, want)
		}
	}
}
