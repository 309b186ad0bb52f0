package store_test

import (
	"context"
	"maps"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/store"
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
