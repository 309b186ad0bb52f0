package store_test

import (
	"context"
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

