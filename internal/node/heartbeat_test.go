package node_test

import (
	"context"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/node"
	"github.com/corral-build/corral/internal/testenv"
	"github.com/corral-build/corral/internal/testenv/faultproxy"
)

// TestBusyNodeStaysActive: reports used to restart the heartbeat timer, so a
// node reporting more often than a third of its TTL never renewed its lease
// and went Offline. Here a node reports every 100 ms with a 1 s TTL for
// several TTLs and must stay Active throughout.
func TestBusyNodeStaysActive(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{LeaseTTL: time.Second, Nodes: []testenv.NodeOptions{{Name: "busy", Capacity: 2}}})
	n := c.Nodes()[0]
	c.WaitNodeState(n.Agent.ID(), apiv1.NodeActive, 10*time.Second)
	ctx := context.Background()
	deadline := time.Now().Add(6 * time.Second) // six lease TTLs
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		<-tick.C
		n.Agent.TemplatesChanged()
		nodes, err := c.Client.Nodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes) != 1 || nodes[0].State != apiv1.NodeActive {
			t.Fatalf("a node that reports every 100 ms went %s", nodes[0].State)
		}
	}
}

// TestNodeReportsMeasurements: cpu_util and ram_util are measured on the
// node and free disk is kept current, not read once at start.
func TestNodeReportsMeasurements(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Nodes: []testenv.NodeOptions{{Name: "m"}}})
	n := c.Nodes()[0]
	c.WaitNodeState(n.Agent.ID(), apiv1.NodeActive, 10*time.Second)
	ctx := context.Background()
	deadline := time.Now().Add(20 * time.Second)
	for {
		n.Agent.TemplatesChanged()
		nodes, err := c.Client.Nodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if nodes[0].RAMUtil > 0 && nodes[0].RAMUtil < 1 && nodes[0].CPUUtil > 0 && nodes[0].FreeDiskSpace > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node reports cpu_util %v ram_util %v free_disk_space %d", nodes[0].CPUUtil, nodes[0].RAMUtil, nodes[0].FreeDiskSpace)
		}
		time.Sleep(200 * time.Millisecond) // polling interval, not synchronisation
	}
}

// TestHungReportsDoNotStopHeartbeats: a controller whose report and status
// endpoints hang forever must not block the node's heartbeats: the node
// stays Active for several lease TTLs.
func TestHungReportsDoNotStopHeartbeats(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{LeaseTTL: time.Second})
	proxy := faultproxy.New(t, c.Controllers[0].URL)
	n := c.StartNode(testenv.NodeOptions{Name: "patient", Capacity: 2, ControllerURLs: []string{proxy.URL}})
	proxy.Set("/api/v1/agent/report", faultproxy.Fault{Hang: true})
	proxy.Set("/api/v1/agent/status", faultproxy.Fault{Hang: true})
	ctx := context.Background()
	deadline := time.Now().Add(5 * time.Second) // five lease TTLs
	for time.Now().Before(deadline) {
		n.Agent.TemplatesChanged() // a report, which hangs
		nodes, err := c.Client.Nodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if nodes[0].State != apiv1.NodeActive {
			t.Fatalf("with its reports hung, the node went %s", nodes[0].State)
		}
		time.Sleep(100 * time.Millisecond) // polling interval, not synchronisation
	}
	if proxy.Hits("/api/v1/agent/report") == 0 {
		t.Fatal("no report reached the hung endpoint: the fault was not exercised")
	}
}

// TestReportDue: an agent sends a periodic report that only drifted once a
// minute, one that changed (or was asked for) at once.
func TestReportDue(t *testing.T) {
	now := time.Now()
	last := apiv1.NodeReport{NodeID: "n", CPUUtil: 0.2, RAMUtil: 0.5, FreeDiskSpace: 50 << 30, Templates: []apiv1.NodeTemplate{{UUID: "t", Tag: "v1"}}}
	drift := last
	drift.CPUUtil, drift.FreeDiskSpace = 0.22, 50<<30-1<<20
	busy := last
	busy.CPUUtil = 0.6
	pulled := last
	pulled.Templates = append(pulled.Templates, apiv1.NodeTemplate{UUID: "u", Tag: "v1"})
	for _, c := range []struct {
		name   string
		last   *apiv1.NodeReport
		age    time.Duration
		cur    apiv1.NodeReport
		forced bool
		want   bool
	}{
		{"first", nil, 0, drift, false, true},
		{"drift", &last, 15 * time.Second, drift, false, false},
		{"drift, a minute on", &last, time.Minute, drift, false, true},
		{"busy", &last, 15 * time.Second, busy, false, true},
		{"template pulled", &last, 15 * time.Second, pulled, false, true},
		{"asked", &last, time.Second, drift, true, true},
	} {
		if got := node.ReportDue(c.last, now.Add(-c.age), c.cur, now, c.forced); got != c.want {
			t.Errorf("%s: due %v, want %v", c.name, got, c.want)
		}
	}
}
