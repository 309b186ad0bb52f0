package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/store"
	"github.com/corral-build/corral/internal/testenv"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestStorm runs random starts, terminates and node kills (graceful stops
// of in-process agents, SIGKILL of a real node process) against a real
// cloud of three synthetic nodes, with random 0-90 ms gaps. Then, once the
// cloud settles: every instance is in a final or running state that
// matches what the nodes run, every node's slot count is what the
// instances hold, no instance ever had assignments on two nodes at once,
// and terminating everything frees every slot. CORRAL_STORM_SEED replays a
// run; CORRAL_STORM_STEPS makes it longer.
func TestStorm(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s, err := strconv.ParseUint(os.Getenv("CORRAL_STORM_SEED"), 10, 64); err == nil {
		seed = s
	}
	steps := 120
	if n, err := strconv.Atoi(os.Getenv("CORRAL_STORM_STEPS")); err == nil {
		steps = n
	}
	t.Logf("storm seed %d (CORRAL_STORM_SEED=%d replays it), %d steps", seed, seed, steps)
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))

	c := testenv.StartCluster(t, testenv.Options{LeaseTTL: 2 * time.Second})
	ctx := context.Background()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.Etcd.ClientURL}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	st := store.New(cli, "")
	startRev := mustRev(t, cli)

	const capacity = 4
	type stormNode struct {
		name, dir string
		inProc    *testenv.RunningNode // nil for the process node
		proc      *exec.Cmd
		up        bool
	}
	nodes := []*stormNode{{name: "a", dir: t.TempDir()}, {name: "b", dir: t.TempDir()}, {name: "p", dir: t.TempDir()}}
	bringUp := func(n *stormNode) {
		if n.name == "p" {
			n.proc = nodeProcess(t, c, n.name, n.dir, capacity, 30*time.Millisecond)
		} else {
			n.inProc = c.StartNode(testenv.NodeOptions{Name: n.name, Capacity: capacity, DataDir: n.dir, PullTime: 30 * time.Millisecond})
		}
		n.up = true
	}
	bringDown := func(n *stormNode) {
		if n.proc != nil {
			n.proc.Process.Kill() // a crash: no goodbye, VMs and markers left behind
			n.proc.Wait()
			n.proc = nil
		} else {
			n.inProc.Stop()
			n.inProc = nil
		}
		n.up = false
	}
	for _, n := range nodes {
		bringUp(n)
	}

	var ids []string
	for step := range steps {
		switch r := rng.IntN(100); {
		case r < 45:
			got, err := c.Client.StartInstances(ctx, map[string]any{"vmid": c.TemplateID, "count": 1 + rng.IntN(3),
				"priority": 1 + rng.IntN(3)})
			if err != nil {
				t.Fatalf("step %d: start: %v", step, err)
			}
			ids = append(ids, got...)
		case r < 85:
			if len(ids) > 0 {
				if err := c.Client.Terminate(ctx, ids[rng.IntN(len(ids))]); err != nil {
					t.Fatalf("step %d: terminate: %v", step, err)
				}
			}
		default:
			n := nodes[rng.IntN(len(nodes))]
			upCount := 0
			for _, m := range nodes {
				if m.up {
					upCount++
				}
			}
			switch {
			case !n.up:
				bringUp(n)
			case upCount > 1:
				bringDown(n)
			}
		}
		time.Sleep(time.Duration(rng.IntN(90)) * time.Millisecond) // the storm's pace, not synchronisation
	}
	for _, n := range nodes {
		if !n.up {
			bringUp(n)
		}
	}

	// Settled: nothing in flight. Instances are Started, Error, Terminated,
	// or Scheduling without a node (waiting for capacity).
	settled := func() (recs, unsettled []store.InstanceRecord) {
		recs, err := st.ListInstances(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			switch {
			case r.State == apiv1.StateStarted, r.State == apiv1.StateError, r.State == apiv1.StateTerminated:
			case r.State == apiv1.StateScheduling && r.NodeID == "" && strings.Contains(r.Message, "capacity"):
			default:
				unsettled = append(unsettled, r)
			}
		}
		return recs, unsettled
	}
	// The node list is read between two reads of the instances, and only
	// a pair that agrees counts: a waiting instance placed in between (a
	// node that just came back frees capacity) would make the comparison
	// below race the scheduler.
	brief := func(recs []store.InstanceRecord) []string {
		var out []string
		for _, r := range recs {
			out = append(out, fmt.Sprintf("%s %s %s %v", r.InstanceID, r.State, r.NodeID, r.SlotHeld))
		}
		return out
	}
	var recs []store.InstanceRecord
	var apiNodes []apiv1.Node
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		var unsettled []store.InstanceRecord
		if recs, unsettled = settled(); len(unsettled) == 0 {
			if apiNodes, err = c.Client.Nodes(ctx); err != nil {
				t.Fatal(err)
			}
			again, unsettled2 := settled()
			if len(unsettled2) == 0 && slices.Equal(brief(recs), brief(again)) {
				break
			}
			unsettled = unsettled2
		}
		if time.Now().After(deadline) {
			for _, r := range unsettled {
				t.Errorf("instance %s still %s on node %q (slot held %v): %q", r.InstanceID, r.State, r.NodeID, r.SlotHeld, r.Message)
			}
			t.Fatal("the cloud did not settle within 60 s after the storm")
		}
	}

	// What the instances hold matches what the nodes run.
	byName := map[string]apiv1.Node{}
	for _, n := range apiNodes {
		byName[n.NodeName] = n
	}
	held := map[string]int{}
	started := map[string][]string{}
	for _, r := range recs {
		if r.SlotHeld {
			held[r.NodeID]++
		}
		if r.State == apiv1.StateStarted {
			started[r.NodeID] = append(started[r.NodeID], r.InstanceID)
		}
	}
	for _, n := range nodes {
		id := byName[n.name].NodeID
		if held[id] > capacity {
			t.Errorf("node %s: %d slots held, capacity %d", n.name, held[id], capacity)
		}
		if got := byName[n.name].VMCount; got != held[id] {
			t.Errorf("node %s: vm_count %d, instances holding its slots %d", n.name, got, held[id])
		}
		if n.inProc != nil {
			running := n.inProc.Agent.Running()
			slices.Sort(running)
			want := started[id]
			slices.Sort(want)
			if !slices.Equal(running, want) {
				t.Errorf("node %s runs %v, the controller has Started there %v", n.name, running, want)
				for _, r := range recs {
					if slices.Contains(running, r.InstanceID) != slices.Contains(want, r.InstanceID) {
						t.Errorf("instance %s: %s on node %q (slot held %v): %q", r.InstanceID, r.State, r.NodeID, r.SlotHeld, r.Message)
					}
				}
			}
		}
	}

	// Never assigned to two nodes at once, across the whole history.
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	endRev := mustRev(t, cli)
	live := map[string]map[string]bool{} // instance → nodes with an assignment key
	for wr := range cli.Watch(wctx, "/corral/assign/", clientv3.WithPrefix(), clientv3.WithRev(startRev)) {
		for _, ev := range wr.Events {
			key := string(ev.Kv.Key)
			inst, node := path.Base(key), path.Base(path.Dir(key))
			if live[inst] == nil {
				live[inst] = map[string]bool{}
			}
			if ev.Type == mvccpb.DELETE {
				delete(live[inst], node)
				continue
			}
			live[inst][node] = true
			if len(live[inst]) > 1 {
				t.Errorf("instance %s assigned to several nodes at once: %v (revision %d)", inst, live[inst], ev.Kv.ModRevision)
			}
		}
		if wr.Header.Revision >= endRev {
			break
		}
	}

	// Terminating everything frees every slot on every node.
	for _, r := range recs {
		if r.State != apiv1.StateTerminated {
			if err := c.Client.Terminate(ctx, r.InstanceID); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, r := range recs {
		c.WaitState(r.InstanceID, apiv1.StateTerminated, 30*time.Second)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		busy := ""
		ns, _ := c.Client.Nodes(ctx)
		for _, n := range ns {
			if n.VMCount != 0 {
				busy += fmt.Sprintf(" %s:%d", n.NodeName, n.VMCount)
			}
		}
		for _, n := range nodes {
			if n.inProc != nil && len(n.inProc.Agent.Running()) > 0 {
				busy += fmt.Sprintf(" %s runs %v", n.name, n.inProc.Agent.Running())
			}
		}
		if busy == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slots still held after every instance terminated:%s", busy)
		}
	}
}
