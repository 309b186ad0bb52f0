package controller_test

import (
	"context"
	"slices"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/store"
	"github.com/corral-build/corral/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestNodeCallsReadFromTheView: with the view on, a node's long polls (the
// first, one woken by a change, one answering a change already made, one
// that times out) send no read to etcd, and its status reports do not read
// the node. Each poll read the node and its three desired-state prefixes
// (4 ranges a poll: 130 a second for 1000 idle nodes), and without the
// view's watch each wake needed watches of its own; each report read the
// node (2.7% of the controller's CPU in the fleet-scale burst).
func TestNodeCallsReadFromTheView(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cli := testenv.NewEtcdClient(t)
	st := store.New(cli.Client, "")
	svc := controller.New(st, nil, controller.Config{AssignmentPoll: time.Hour}, testenv.Logger(t))
	svc.StartWatchers(ctx)
	if _, err := st.JoinNode(ctx, apiv1.NodeReport{NodeID: "n1", NodeName: "n1", Capacity: 4}, nil, 30); err != nil {
		t.Fatal(err)
	}
	fence := clientv3.Compare(clientv3.CreateRevision(st.Key("election/test")), ">", 0)
	if _, err := cli.Put(ctx, st.Key("election/test"), "me"); err != nil {
		t.Fatal(err)
	}
	place := func(id string) {
		t.Helper()
		if err := st.CreateInstances(ctx, []store.InstanceRecord{{Instance: apiv1.Instance{InstanceID: id, State: apiv1.StateScheduling, CrTime: time.Now()}}}); err != nil {
			t.Fatal(err)
		}
		snap, err := st.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(snap.Instances, func(e store.InstanceEntry) bool { return e.InstanceID == id })
		rec := snap.Instances[i].InstanceRecord
		rec.NodeID, rec.SlotHeld = "n1", true
		if rev, err := st.Place(ctx, store.Placement{Instance: rec, InstanceRev: snap.Instances[i].ModRev, NodeID: "n1",
			NodeRev: snap.Nodes[0].ModRev, AssignedSince: snap.Rev}, fence); err != nil || rev == 0 {
			t.Fatalf("place %s: rev %d, %v", id, rev, err)
		}
	}
	place("i1")
	if err := st.CreateDistribution(ctx, apiv1.Distribution{RequestID: "d1", Nodes: map[string]string{"n1": ""}},
		apiv1.Prefetch{RequestID: "d1", VMID: "t1", Tag: "v1"}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); !st.ViewCaughtUp(ctx); {
		if time.Now().After(deadline) {
			t.Fatal("the view did not catch up with etcd in 10 s")
		}
		time.Sleep(10 * time.Millisecond) // the view starts: poll its sync
	}
	ids := func(as apiv1.Assignments) []string {
		var out []string
		for _, a := range as.Assignments {
			out = append(out, a.InstanceID)
		}
		return out
	}
	poll := func(ctx context.Context, since int64) (apiv1.Assignments, int64, error) {
		before := cli.Ranges()
		as, err := svc.WaitAssignments(ctx, "n1", since)
		return as, cli.Ranges() - before, err
	}

	first, reads, err := poll(ctx, 0)
	if err != nil || !slices.Equal(ids(first), []string{"i1"}) || len(first.Prefetches) != 1 || first.Prefetches[0].RequestID != "d1" {
		t.Fatalf("first poll: %+v, %v", first, err)
	}
	if reads != 0 {
		t.Errorf("the first poll sent %d reads to etcd", reads)
	}

	// Woken by a change while it waits: the answer has it.
	woken := make(chan apiv1.Assignments, 1)
	go func() {
		wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
		defer wcancel()
		as, err := svc.WaitAssignments(wctx, "n1", first.Revision)
		if err != nil {
			t.Errorf("woken poll: %v", err)
		}
		woken <- as
	}()
	place("i2")
	second := <-woken
	if !slices.Equal(ids(second), []string{"i1", "i2"}) || second.Revision <= first.Revision {
		t.Fatalf("the poll woken by a placement answered %v at revision %d (first %d)", ids(second), second.Revision, first.Revision)
	}

	// A change made before the poll came: answered at once.
	again, reads, err := poll(ctx, first.Revision)
	if err != nil || !slices.Equal(ids(again), []string{"i1", "i2"}) {
		t.Fatalf("poll after a change: %v, %v", ids(again), err)
	}
	if reads != 0 {
		t.Errorf("a poll answering a change sent %d reads to etcd", reads)
	}

	// Nothing changes: the poll waits until it is given up.
	tctx, tcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer tcancel()
	if _, reads, err := poll(tctx, again.Revision); err == nil || reads != 0 {
		t.Errorf("a poll with nothing to answer: err %v (want the deadline), %d reads sent to etcd", err, reads)
	}

	// Status reports: the instances are read (in one transaction), not the node
	// again.
	before := cli.Ranges()
	if err := svc.ReportStatus(ctx, apiv1.StatusReport{NodeID: "n1", Instances: []apiv1.InstanceStatus{{InstanceID: "i1", State: apiv1.StatePulling}}}); err != nil {
		t.Fatal(err)
	}
	if n := cli.Ranges() - before; n != 0 {
		t.Errorf("a status report sent %d reads to etcd", n)
	}
	if got, err := st.GetInstance(ctx, "i1"); err != nil || got.State != apiv1.StatePulling {
		t.Errorf("the report was not applied: %s, %v", got.State, err)
	}
}
