package e2e

import (
	"context"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/testenv"
	"github.com/corral-build/corral/internal/testenv/faultproxy"
)

// waitInstance polls an instance until cond holds or the deadline passes.
func waitInstance(t *testing.T, c *testenv.Cluster, id string, timeout time.Duration, what string, cond func(apiv1.Instance) bool) apiv1.Instance {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(timeout)
	for {
		in, err := c.Client.Instance(ctx, id)
		if err == nil && cond(in) {
			return in
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance %s not %s after %s: %+v (err %v)", id, what, timeout, in, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTerminateBeforeNodeSawPlacement: an instance placed on a node and
// terminated before the node's long poll saw the assignment reaches
// Terminated and frees its slot; it used to stay Terminating for good.
func TestTerminateBeforeNodeSawPlacement(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{})
	proxy := faultproxy.New(t, c.Controllers[0].URL)
	// The node joins and heartbeats, but cannot see its assignments yet.
	const polls = "/api/v1/agent/assignments"
	proxy.Set(polls, faultproxy.Fault{Status: 503})
	c.StartNode(testenv.NodeOptions{Name: "n1", Capacity: 1, ControllerURLs: []string{proxy.URL}})
	ctx := context.Background()
	ids, err := c.Client.StartInstances(ctx, map[string]any{"vmid": c.TemplateID})
	if err != nil {
		t.Fatal(err)
	}
	waitInstance(t, c, ids[0], 10*time.Second, "placed", func(in apiv1.Instance) bool { return in.NodeID != "" })
	if err := c.Client.Terminate(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if proxy.Hits(polls) == 0 {
		t.Fatal("the node never tried to poll: the race was not set up")
	}
	proxy.Heal()
	c.WaitState(ids[0], apiv1.StateTerminated, 10*time.Second)

	// The slot is free: the node's only slot runs the next instance.
	ids, err = c.Client.StartInstances(ctx, map[string]any{"vmid": c.TemplateID})
	if err != nil {
		t.Fatal(err)
	}
	c.WaitState(ids[0], apiv1.StateStarted, 10*time.Second)
}
