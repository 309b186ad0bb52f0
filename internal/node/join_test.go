package node_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/driver/synthetic"
	"github.com/corral-build/corral/internal/node"
	"github.com/corral-build/corral/internal/testenv"
)

// TestNodeKeepsItsIdentity: a registered node re-joins only with its own
// credential, so the agent keeps it (0600) beside its id and re-joins
// after a restart; a second machine claiming the same id is refused and
// says why, the first is not disturbed; a disjoined node hears so and stops.
func TestNodeKeepsItsIdentity(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Nodes: []testenv.NodeOptions{{Name: "keep", Capacity: 2}}})
	first := c.Nodes()[0]
	id := first.Agent.ID()
	if err := first.Stop(); err != nil {
		t.Fatal(err)
	}
	cred := filepath.Join(c.Dir, "node-keep", "node-credential")
	fi, err := os.Stat(cred)
	if err != nil {
		t.Fatalf("the node's credential is not kept: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("credential file mode %v, want 0600", fi.Mode().Perm())
	}
	again := c.StartNode(testenv.NodeOptions{Name: "keep", Capacity: 2}) // waits for Active
	if again.Agent.ID() != id {
		t.Fatalf("restarted node is %s, was %s", again.Agent.ID(), id)
	}

	// Another machine with the same id (a cloned disk without the data
	// dir, a typo'd --node-id) holds the join token but not the credential.
	clone, err := node.New(node.Config{ControllerURLs: c.URLs(), Token: "test-token", NodeID: id, Name: "clone", IP: "127.0.0.1",
		DataDir: t.TempDir(), Driver: synthetic.New(time.Millisecond), Log: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = clone.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "already joined") || !strings.Contains(err.Error(), "disjoin") {
		t.Fatalf("a second machine under a registered id: %v, want a refusal that says how to fix it", err)
	}
	nodes, err := c.Client.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 1 || nodes[0].NodeName != "keep" || nodes[0].State != apiv1.NodeActive {
		t.Fatalf("after the refused join: %+v", nodes)
	}

	// A disjoin stops the agent (410 for its own credential).
	if err := c.Client.DisjoinNode(ctx, id); err != nil {
		t.Fatal(err)
	}
	select {
	case <-again.Exited():
	case <-ctx.Done():
		t.Fatal("a disjoined node's agent still runs")
	}
	if err := again.Stop(); !errors.Is(err, client.ErrDisjoined) {
		t.Fatalf("a disjoined node's agent ended with %v, want ErrDisjoined", err)
	}
}
