package store_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/store"
	"github.com/corral-build/corral/internal/testenv"
)

// TestViewReadsItsWrites: with the view on, a write is visible to the
// next read (the consistency barrier), deletes too, and a list matches etcd.
func TestViewReadsItsWrites(t *testing.T) {
	st := newStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st.EnableView(ctx)
	for i := range 50 {
		rec := store.InstanceRecord{Instance: apiv1.Instance{InstanceID: apiv1.NewID(), State: apiv1.StateScheduling, CrTime: time.Now()}}
		if err := st.CreateInstances(ctx, []store.InstanceRecord{rec}); err != nil {
			t.Fatal(err)
		}
		got, err := st.GetInstance(ctx, rec.InstanceID)
		if err != nil || got.InstanceID != rec.InstanceID {
			t.Fatalf("write %d not read back: %v", i, err)
		}
		if _, err := st.UpdateInstance(ctx, rec.InstanceID, func(r *store.InstanceRecord) (store.InstanceUpdate, error) {
			r.State = apiv1.StateStarted
			return store.InstanceUpdate{}, nil
		}); err != nil {
			t.Fatal(err)
		}
		if got, _ := st.GetInstance(ctx, rec.InstanceID); got.State != apiv1.StateStarted {
			t.Fatalf("update %d not read back: %s", i, got.State)
		}
	}
	if !st.ViewCaughtUp(ctx) {
		t.Fatal("the view did not catch up with etcd")
	}
	list, err := st.ListInstances(ctx)
	if err != nil || len(list) != 50 {
		t.Fatalf("list: %v %d", err, len(list))
	}
}

// TestSchedulingSnapshotMatchesFull: the view's kept usage and waiting set
// equal what a full snapshot computes, after places and releases.
func TestSchedulingSnapshotMatchesFull(t *testing.T) {
	st := newStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st.EnableView(ctx)
	var ids []string
	for range 30 {
		rec := store.InstanceRecord{Instance: apiv1.Instance{InstanceID: apiv1.NewID(), State: apiv1.StateScheduling, CrTime: time.Now()},
			Spec: apiv1.StartSpec{VCPU: 2, VRAM: 1024}}
		if err := st.CreateInstances(ctx, []store.InstanceRecord{rec}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, rec.InstanceID)
	}
	for i, id := range ids[:20] {
		node := []string{"n1", "n2", "n3"}[i%3]
		if _, err := st.UpdateInstance(ctx, id, func(r *store.InstanceRecord) (store.InstanceUpdate, error) {
			r.NodeID, r.SlotHeld, r.State = node, true, apiv1.StatePulling
			if i%4 == 0 { // released again
				r.SlotHeld, r.State = false, apiv1.StateTerminated
			}
			return store.InstanceUpdate{}, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	full, err := st.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sched, err := st.SchedulingSnapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := sched.Usage(), full.Usage(); !maps.Equal(got, want) {
		t.Fatalf("usage %v, want %v", got, want)
	}
	// The nodes never joined: their slot holders are there to be failed.
	waiting, lost := 0, 0
	for _, in := range sched.Instances {
		switch {
		case in.State == apiv1.StateScheduling:
			waiting++
		case in.SlotHeld:
			lost++
		default:
			t.Fatalf("scheduling snapshot holds a %s instance holding no slot", in.State)
		}
	}
	if waiting != 10 || lost != 15 {
		t.Fatalf("%d waiting, %d on lost nodes; want 10 and 15", waiting, lost)
	}
}

// TestListByCreationMatchesEtcd: the view's creation order (appended while
// instances come in order, rebuilt when one does not, deleted ones left
// out) lists what etcd holds, in the order a sort of etcd's records gives,
// with each instance as it is now.
func TestListByCreationMatchesEtcd(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	viewed := newStore(t)
	viewed.EnableView(ctx)
	direct := store.New(viewed.Client(), "")
	rng := rand.New(rand.NewPCG(1, 2))
	base := time.Now()
	var ids []string
	all := func(*store.InstanceRecord) bool { return true }
	for step := range 400 {
		switch op := rng.IntN(10); {
		case op < 5 || len(ids) == 0: // create, mostly in order, sometimes earlier, several at one time
			at := base.Add(time.Duration(step) * time.Millisecond)
			if rng.IntN(8) == 0 {
				at = base.Add(-time.Duration(rng.IntN(1000)) * time.Millisecond)
			}
			var recs []store.InstanceRecord
			for range 1 + rng.IntN(3) {
				id := apiv1.NewID()
				ids = append(ids, id)
				recs = append(recs, store.InstanceRecord{Instance: apiv1.Instance{InstanceID: id, State: apiv1.StateScheduling, CrTime: at}})
			}
			if err := viewed.CreateInstances(ctx, recs); err != nil {
				t.Fatal(err)
			}
		case op < 8: // update
			id := ids[rng.IntN(len(ids))]
			viewed.UpdateInstance(ctx, id, func(r *store.InstanceRecord) (store.InstanceUpdate, error) {
				r.Message = fmt.Sprint("step ", step)
				return store.InstanceUpdate{}, nil
			})
		default: // delete
			i := rng.IntN(len(ids))
			viewed.Client().Delete(ctx, viewed.Key("instances/"+ids[i]))
			ids = append(ids[:i], ids[i+1:]...)
		}
		if step%7 != 0 {
			continue
		}
		got, err := viewed.InstancesByCreation(ctx, all)
		if err != nil {
			t.Fatal(err)
		}
		want, err := direct.InstancesByCreation(ctx, all)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("step %d: the view lists %d instances, etcd holds %d", step, len(got), len(want))
		}
		for i := range want {
			if got[i].InstanceID != want[i].InstanceID || got[i].Message != want[i].Message || got[i].ModRev != want[i].ModRev {
				t.Fatalf("step %d, item %d: view %s %q rev %d, etcd %s %q rev %d", step, i,
					got[i].InstanceID, got[i].Message, got[i].ModRev, want[i].InstanceID, want[i].Message, want[i].ModRev)
			}
			a, _ := got[i].ListItemJSON()
			b, _ := want[i].ListItemJSON()
			if string(a) != string(b) {
				t.Fatalf("step %d: list item of %s differs: %s vs %s", step, want[i].InstanceID, a, b)
			}
		}
	}
	if hits, _ := viewed.ViewReads(); hits == 0 {
		t.Fatal("no list was served by the view")
	}
}

// TestGetDoesNotWaitForTheView: a get of one instance is one etcd read and
// returns what etcd holds while the view lags behind (its watch stalled).
// It was the view's consistency barrier, a wait for the view (up to 2 s:
// GET ?id= p99 200-300 ms in the fleet-scale burst), then a read of etcd.
func TestGetDoesNotWaitForTheView(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cli, st := viewedStore(t, ctx)
	id := apiv1.NewID()
	if err := st.CreateInstances(ctx, []store.InstanceRecord{{Instance: apiv1.Instance{InstanceID: id, State: apiv1.StateScheduling, CrTime: time.Now()}}}); err != nil {
		t.Fatal(err)
	}
	waitView(t, ctx, st)
	get := func(want string) {
		t.Helper()
		before := cli.Ranges()
		got, err := st.GetInstance(ctx, id)
		if err != nil || got.State != want {
			t.Fatalf("get: state %q, %v; want %s", got.State, err, want)
		}
		if n := cli.Ranges() - before; n != 1 {
			t.Errorf("a get of one instance (%s) sent %d reads to etcd, want 1", want, n)
		}
	}
	get(apiv1.StateScheduling) // from the view's copy
	cli.Stall.Lock()
	if _, err := st.UpdateInstance(ctx, id, func(r *store.InstanceRecord) (store.InstanceUpdate, error) {
		r.State = apiv1.StateStarted
		return store.InstanceUpdate{}, nil
	}); err != nil {
		t.Fatal(err)
	}
	get(apiv1.StateStarted) // the view has not seen it
	cli.Stall.Unlock()
}

// TestPollNeverAnswersOlderThanItsLast: a node's poll whose last answer
// was at a newer revision than the view has applied (another controller's
// answer, or etcd's) is not answered from the lagging view, which would
// take back what the node was already told; it is answered from etcd.
func TestPollNeverAnswersOlderThanItsLast(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cli, st := viewedStore(t, ctx)
	waitView(t, ctx, st)
	cli.Stall.Lock()
	defer cli.Stall.Unlock()
	if err := st.CreateDistribution(ctx, apiv1.Distribution{RequestID: "d1", Nodes: map[string]string{"n1": ""}},
		apiv1.Prefetch{RequestID: "d1", VMID: "t1", Tag: "v1"}); err != nil {
		t.Fatal(err)
	}
	now, err := cli.Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	since := now.Header.Revision // the node was told about d1 at this revision
	d, err := st.WaitDesired(ctx, "n1", since, 100*time.Millisecond)
	if err != nil || d.Rev < since || len(d.Prefetches) != 1 {
		t.Fatalf("poll since %d answered at revision %d with %d pulls (%v): older than the node's last answer", since, d.Rev, len(d.Prefetches), err)
	}
}

// TestPurgeFinishedFromTheView: with the view on, the purge of finished
// instances (every few seconds) reads no instance from etcd (it read and
// decoded all 10,000 each time in the fleet-scale run), and a record that
// changed after the view last saw it is kept.
func TestPurgeFinishedFromTheView(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cli, st := viewedStore(t, ctx)
	old := time.Now().Add(-time.Hour)
	if err := st.CreateInstances(ctx, []store.InstanceRecord{
		{Instance: apiv1.Instance{InstanceID: "done", State: apiv1.StateTerminated}, FinishedAt: old},
		{Instance: apiv1.Instance{InstanceID: "changed", State: apiv1.StateTerminated}, FinishedAt: old},
		{Instance: apiv1.Instance{InstanceID: "fresh", State: apiv1.StateTerminated}, FinishedAt: time.Now()},
		{Instance: apiv1.Instance{InstanceID: "running", State: apiv1.StateStarted}},
	}); err != nil {
		t.Fatal(err)
	}
	waitView(t, ctx, st)
	cli.Stall.Lock()
	if _, err := st.UpdateInstance(ctx, "changed", func(r *store.InstanceRecord) (store.InstanceUpdate, error) {
		r.FinishedAt = time.Now()
		return store.InstanceUpdate{}, nil
	}); err != nil {
		t.Fatal(err)
	}
	before := cli.Ranges()
	n, err := st.PurgeFinished(ctx, time.Minute)
	reads := cli.Ranges() - before
	cli.Stall.Unlock()
	if err != nil || n != 1 {
		t.Fatalf("purged %d, err %v; want 1", n, err)
	}
	if reads != 0 {
		t.Errorf("the purge sent %d reads to etcd", reads)
	}
	if _, err := st.GetInstance(ctx, "done"); !errors.Is(err, store.ErrNotFound) {
		t.Error("old terminated instance kept")
	}
	for _, id := range []string{"changed", "fresh", "running"} {
		if _, err := st.GetInstance(ctx, id); err != nil {
			t.Errorf("%s: %v", id, err)
		}
	}
}

// viewedStore is a store with its view on, over a client that counts its
// reads and can stall its watches.
func viewedStore(t *testing.T, ctx context.Context) (*testenv.EtcdClient, *store.Store) {
	cli := testenv.NewEtcdClient(t)
	st := store.New(cli.Client, "")
	st.EnableView(ctx)
	return cli, st
}

// waitView waits until the view has applied everything written so far.
func waitView(t *testing.T, ctx context.Context, st *store.Store) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !st.ViewCaughtUp(ctx); {
		if time.Now().After(deadline) {
			t.Fatal("the view did not catch up with etcd in 10 s")
		}
	}
}

// TestPollsAcrossARelist: when the view's watch cannot resume (the history
// it missed while cut off was compacted), the view lists etcd again; a
// poll waiting on it is answered with the state after, not stranded, and
// what the view missed is not lost.
func TestPollsAcrossARelist(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cli, st := viewedStore(t, ctx)
	pull := func(id string) {
		t.Helper()
		if err := st.CreateDistribution(ctx, apiv1.Distribution{RequestID: id, Nodes: map[string]string{"n1": ""}},
			apiv1.Prefetch{RequestID: id, VMID: "t1", Tag: "v1"}); err != nil {
			t.Fatal(err)
		}
	}
	pull("d1")
	waitView(t, ctx, st)
	first, err := st.WaitDesired(ctx, "n1", 0, time.Minute)
	if err != nil || len(first.Prefetches) != 1 {
		t.Fatalf("first poll: %+v, %v", first, err)
	}
	lists := st.ViewLists()
	woken := make(chan store.NodeDesired, 1)
	go func() {
		d, err := st.WaitDesired(ctx, "n1", first.Rev, time.Minute)
		if err != nil {
			t.Errorf("waiting poll: %v", err)
		}
		woken <- d
	}()
	// Cut off, the view misses d1's end and d2; the history is compacted.
	cli.Stall.Lock()
	if _, err := cli.Delete(ctx, st.DistributePrefix("n1")+"d1"); err != nil {
		t.Fatal(err)
	}
	pull("d2")
	now, err := cli.Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, now.Header.Revision); err != nil {
		t.Fatal(err)
	}
	cli.CutWatches()
	cli.Stall.Unlock()
	var got store.NodeDesired
	select {
	case got = <-woken:
	case <-time.After(30 * time.Second):
		t.Fatal("the waiting poll was not answered within 30 s of the view's watch breaking")
	}
	if len(got.Prefetches) != 1 || got.Prefetches[0].RequestID != "d2" || got.Rev < now.Header.Revision {
		t.Errorf("answer after the relist: %+v at revision %d, want d2 only at >= %d", got.Prefetches, got.Rev, now.Header.Revision)
	}
	waitView(t, ctx, st)
	if n := st.ViewLists(); n != lists+1 {
		t.Errorf("the view listed %d times after its watch broke on a compacted revision, want 1", n-lists)
	}
}

// TestViewCatchesUpPastOtherWrites: writes outside the store's prefix (another
// cloud sharing the etcd, etcd's own) move etcd's revision but send the view
// no event; a progress notification tells it how far it has seen, so a read
// waiting for the view is served by it, not by etcd after viewWait.
func TestViewCatchesUpPastOtherWrites(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cli, st := viewedStore(t, ctx)
	waitView(t, ctx, st)
	for i := range 3 {
		if _, err := cli.Put(ctx, fmt.Sprintf("another-cloud/key-%d", i), "x"); err != nil {
			t.Fatal(err)
		}
		began := time.Now()
		if !st.ViewCaughtUp(ctx) {
			t.Fatalf("after a write outside its prefix the view never caught up (%s)", time.Since(began))
		}
	}
}
