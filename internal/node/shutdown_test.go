package node_test

import (
	"context"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/testenv"
	"github.com/corral-build/corral/internal/testenv/faultproxy"
)

// TestShutdownSendsItsFinalStatuses: a stopping agent destroys its VMs and
// reports each; a report that fails then is sent again, not dropped (the
// agent used to sleep 50 ms for "the batch in flight" and stop sending, so
// the controller never heard why the instance ended).
func TestShutdownSendsItsFinalStatuses(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{})
	proxy := faultproxy.New(t, c.Controllers[0].URL)
	n := c.StartNode(testenv.NodeOptions{Name: "stopping", Capacity: 2, ControllerURLs: []string{proxy.URL}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ids, err := c.Client.StartInstances(ctx, map[string]any{"vmid": c.TemplateID})
	if err != nil {
		t.Fatal(err)
	}
	c.WaitState(ids[0], apiv1.StateStarted, 30*time.Second)

	proxy.Set("/api/v1/agent/status", faultproxy.Fault{Status: 503})
	stopped := make(chan error, 1)
	go func() { stopped <- n.Stop() }()
	for proxy.Hits("/api/v1/agent/status") == 0 {
		select {
		case err := <-stopped:
			t.Fatalf("the agent stopped (%v) without trying to report its instance", err)
		case <-ctx.Done():
			t.Fatal("the stopping agent never reported its instance")
		case <-time.After(10 * time.Millisecond): // polling the proxy's count
		}
	}
	proxy.Heal()
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	in, err := c.Client.Instance(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if in.State != apiv1.StateError || !strings.Contains(in.Message, "shut down") {
		t.Fatalf("after its node stopped, the instance is %s %q: the node's final report was lost", in.State, in.Message)
	}
}
