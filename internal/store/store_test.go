package store_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/store"
	"github.com/corral-build/corral/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func newStore(t *testing.T) *store.Store {
	e := testenv.StartEtcd(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.ClientURL}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return store.New(cli, "")
}

// always is a fence that holds (a leader key that exists).
func always(t *testing.T, st *store.Store) clientv3.Cmp {
	key := st.Key("election/test")
	if _, err := st.Client().Put(context.Background(), key, "me"); err != nil {
		t.Fatal(err)
	}
	return clientv3.Compare(clientv3.CreateRevision(key), ">", 0)
}

func TestPlaceRechecksInsideTheTransaction(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	if _, err := st.JoinNode(ctx, apiv1.NodeReport{NodeID: "n1", NodeName: "n1", Capacity: 1}, nil, 10); err != nil {
		t.Fatal(err)
	}
	recs := []store.InstanceRecord{
		{Instance: apiv1.Instance{InstanceID: "a", State: apiv1.StateScheduling}},
		{Instance: apiv1.Instance{InstanceID: "b", State: apiv1.StateScheduling}},
	}
	if err := st.CreateInstances(ctx, recs); err != nil {
		t.Fatal(err)
	}
	snap, err := st.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fence := always(t, st)
	place := func(id string, since int64, fence clientv3.Cmp) int64 {
		var e store.InstanceEntry
		for _, in := range snap.Instances {
			if in.InstanceID == id {
				e = in
			}
		}
		rec := e.InstanceRecord
		rec.NodeID, rec.SlotHeld = "n1", true
		rev, err := st.Place(ctx, store.Placement{Instance: rec, InstanceRev: e.ModRev, NodeID: "n1",
			NodeRev: snap.Nodes[0].ModRev, AssignedSince: since}, fence)
		if err != nil {
			t.Fatal(err)
		}
		return rev
	}
	// A fence that does not hold (another leader) commits nothing.
	lost := clientv3.Compare(clientv3.CreateRevision(st.Key("election/nobody")), ">", 0)
	if place("a", snap.Rev, lost) != 0 {
		t.Fatal("placement committed without the leadership fence")
	}
	if place("a", snap.Rev, fence) == 0 {
		t.Fatal("valid placement refused")
	}
	// A second placement planned on the same old snapshot must not commit:
	// the node's assignments changed after it.
	if place("b", snap.Rev, fence) != 0 {
		t.Fatal("placement on a stale capacity view committed")
	}
	// Re-placing the same instance from the old snapshot fails on its revision.
	if place("a", 1<<40, fence) != 0 {
		t.Fatal("instance placed twice")
	}
	as, _, err := st.Assignments(ctx, "n1")
	if err != nil || len(as) != 1 || as[0].InstanceID != "a" {
		t.Fatalf("assignments %v err %v", as, err)
	}
}

func TestLeaseLivenessAndRejoin(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	report := apiv1.NodeReport{NodeID: "n1", NodeName: "n1", Capacity: 2}
	lease, err := st.JoinNode(ctx, report, []string{"g1"}, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.UpdateNode(ctx, "n1", func(n *store.NodeRecord) error { n.Drain = true; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := st.KeepAlive(ctx, lease); err != nil {
		t.Fatal(err)
	}
	// TTL 1s; etcd's lease granularity rounds up, so allow a few seconds.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		alive, _ := st.AliveNodes(ctx)
		if !alive["n1"] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("node still alive 10 s after its 1 s lease stopped being renewed")
		}
	}
	if err := st.KeepAlive(ctx, lease); !errors.Is(err, store.ErrLeaseExpired) {
		t.Fatalf("keepalive on expired lease: %v", err)
	}
	// Re-joining keeps the admin's settings and makes the node alive again.
	if _, err := st.JoinNode(ctx, report, nil, 10); err != nil {
		t.Fatal(err)
	}
	n, err := st.GetNode(ctx, "n1")
	if err != nil || !n.Drain || len(n.Groups) != 1 {
		t.Fatalf("rejoined node lost its settings: %+v %v", n, err)
	}
	if alive, _ := st.AliveNodes(ctx); !alive["n1"] {
		t.Fatal("rejoined node not alive")
	}
}

func TestPurgeFinished(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	old := time.Now().Add(-time.Hour)
	err := st.CreateInstances(ctx, []store.InstanceRecord{
		{Instance: apiv1.Instance{InstanceID: "done", State: apiv1.StateTerminated}, FinishedAt: old},
		{Instance: apiv1.Instance{InstanceID: "fresh", State: apiv1.StateTerminated}, FinishedAt: time.Now()},
		{Instance: apiv1.Instance{InstanceID: "running", State: apiv1.StateStarted}},
	})
	if err != nil {
		t.Fatal(err)
	}
	n, err := st.PurgeFinished(ctx, time.Minute)
	if err != nil || n != 1 {
		t.Fatalf("purged %d, err %v", n, err)
	}
	if _, err := st.GetInstance(ctx, "done"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal("old terminated instance kept")
	}
	for _, id := range []string{"fresh", "running"} {
		if _, err := st.GetInstance(ctx, id); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
}

// TestPurgeRequests: distribute and save-image requests end when their node
// or instance is gone, and are deleted a retention after they finished.
func TestPurgeRequests(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	if _, err := st.JoinNode(ctx, apiv1.NodeReport{NodeID: "n1", NodeName: "n1", Capacity: 1}, nil, 10); err != nil {
		t.Fatal(err)
	}
	d := apiv1.Distribution{RequestID: "d1", Nodes: map[string]string{"n1": "pending", "ghost": "pending"}, TS: time.Now()}
	if err := st.CreateDistribution(ctx, d, apiv1.Prefetch{RequestID: "d1"}); err != nil {
		t.Fatal(err)
	}
	img := apiv1.Image{RequestID: "i1", InstanceID: "gone", NodeID: "n1", Status: apiv1.ImagePending}
	if err := st.CreateImage(ctx, img, apiv1.ImageSave{RequestID: "i1"}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("save of an unassigned instance: %v", err)
	}
	// Written directly: the instance left its node after the request.
	if _, err := st.Client().Put(ctx, st.Key("images/i1"), `{"request_id":"i1","instance_id":"gone","node_id":"n1","status":"pending"}`); err != nil {
		t.Fatal(err)
	}

	if _, err := st.PurgeFinishedDistributions(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := st.PurgeFinishedImages(ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	got, err := st.GetDistribution(ctx, "d1")
	if err != nil || got.Nodes["ghost"] != "error: the node left the cloud" || got.Nodes["n1"] != "pending" {
		t.Fatalf("distribution %+v %v", got, err)
	}
	if i, err := st.GetImage(ctx, "i1"); err != nil || i.Status != apiv1.ImageError {
		t.Fatalf("orphaned image request %+v %v", i, err)
	}

	if err := st.FinishPrefetch(ctx, "n1", "d1", "done"); err != nil {
		t.Fatal(err)
	}
	if n, err := st.PurgeFinishedDistributions(ctx, time.Hour); err != nil || n != 0 {
		t.Fatalf("purged a fresh distribution: %d %v", n, err)
	}
	if n, err := st.PurgeFinishedDistributions(ctx, 0); err != nil || n != 1 {
		t.Fatalf("purge finished distribution: %d %v", n, err)
	}
	if n, err := st.PurgeFinishedImages(ctx, 0); err != nil || n != 1 {
		t.Fatalf("purge finished image request: %d %v", n, err)
	}
}

// TestUpdateInstancesLosesARace: a batch whose record changed between its
// read and its commit is applied one instance at a time on the records as
// they are then, keeping the other writer's change.
func TestUpdateInstancesLosesARace(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	recs := []store.InstanceRecord{
		{Instance: apiv1.Instance{InstanceID: "a", State: apiv1.StatePulling}},
		{Instance: apiv1.Instance{InstanceID: "b", State: apiv1.StatePulling}},
	}
	if err := st.CreateInstances(ctx, recs); err != nil {
		t.Fatal(err)
	}
	raced := false
	err := st.UpdateInstances(ctx, []string{"a", "b", "missing"}, func(r *store.InstanceRecord) (store.InstanceUpdate, error) {
		if !raced {
			raced = true
			if _, err := st.UpdateInstance(ctx, "b", func(r *store.InstanceRecord) (store.InstanceUpdate, error) {
				r.Message = "changed meanwhile"
				return store.InstanceUpdate{}, nil
			}); err != nil {
				t.Fatal(err)
			}
		}
		r.State = apiv1.StateStarted
		return store.InstanceUpdate{}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b"} {
		r, err := st.GetInstance(ctx, id)
		if err != nil || r.State != apiv1.StateStarted {
			t.Errorf("%s: %s, %v", id, r.State, err)
		}
	}
	if r, _ := st.GetInstance(ctx, "b"); r.Message != "changed meanwhile" {
		t.Errorf("the other writer's change was lost: %q", r.Message)
	}
}

// TestPurgeIsBatched: purging many finished instances takes one etcd
// revision per batch (it took one per instance: a second revision per
// instance lifecycle), and one that changed meanwhile stays.
func TestPurgeIsBatched(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	old := time.Now().Add(-time.Hour)
	var recs []store.InstanceRecord
	for i := range 120 {
		recs = append(recs, store.InstanceRecord{Instance: apiv1.Instance{InstanceID: fmt.Sprint("i", i), State: apiv1.StateTerminated}, FinishedAt: old})
	}
	if err := st.CreateInstances(ctx, recs); err != nil {
		t.Fatal(err)
	}
	before, _ := st.Client().Get(ctx, "x")
	n, err := st.PurgeFinished(ctx, time.Minute)
	if err != nil || n != 120 {
		t.Fatalf("purged %d, err %v", n, err)
	}
	after, _ := st.Client().Get(ctx, "x")
	if revs := after.Header.Revision - before.Header.Revision; revs > 3 {
		t.Errorf("purging 120 instances took %d etcd revisions, want at most 3", revs)
	}
	if left, _ := st.ListInstances(ctx); len(left) != 0 {
		t.Errorf("%d instances left", len(left))
	}
}

// TestKeepAliveManyAtOnce: renewals of many leases at once over the one
// stream each get their own lease's answer; a lease that does not exist
// (or was revoked) is ErrLeaseExpired, and the stream goes on serving.
func TestKeepAliveManyAtOnce(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	var leases []int64
	for i := range 40 {
		l, err := st.JoinNode(ctx, apiv1.NodeReport{NodeID: fmt.Sprint("n", i), NodeName: "n", Capacity: 1}, nil, 30)
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, l)
	}
	if err := st.ReleaseLease(ctx, leases[0]); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 4*len(leases))
	for range 4 {
		for i, l := range leases {
			go func() {
				err := st.KeepAlive(ctx, l)
				if i == 0 && !errors.Is(err, store.ErrLeaseExpired) {
					err = fmt.Errorf("revoked lease: %v, want ErrLeaseExpired", err)
				} else if i == 0 {
					err = nil
				}
				errs <- err
			}()
		}
	}
	for range 4 * len(leases) {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if err := st.KeepAlive(ctx, 12345); !errors.Is(err, store.ErrLeaseExpired) {
		t.Fatalf("unknown lease: %v", err)
	}
	if err := st.KeepAlive(ctx, leases[1]); err != nil {
		t.Fatalf("after the errors: %v", err)
	}
}
