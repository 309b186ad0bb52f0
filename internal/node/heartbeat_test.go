package node_test

import (
	"context"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/testenv"
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
