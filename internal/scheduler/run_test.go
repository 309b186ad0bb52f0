package scheduler_test

import (
	"context"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/scheduler"
	"github.com/corral-build/corral/internal/store"
	"github.com/corral-build/corral/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// lostNodeCloud is a store with node n1 holding three instances (one per
// state a lost node's instance can be in) and n1's lease already revoked,
// and a live node n2 running instance "elsewhere".
func lostNodeCloud(t *testing.T) (*store.Store, func() map[string]store.InstanceRecord) {
	t.Helper()
	_, st := testenv.StoreAt(t, "")
	ctx := context.Background()
	lease, err := st.JoinNode(ctx, apiv1.NodeReport{NodeID: "n1", NodeName: "n1", Capacity: 3}, nil, 30)
	if err != nil {
		t.Fatal(err)
	}
	var recs []store.InstanceRecord
	for id, state := range map[string]string{"booting": apiv1.StatePulling, "running": apiv1.StateStarted, "stopping": apiv1.StateTerminating} {
		recs = append(recs, store.InstanceRecord{Instance: apiv1.Instance{InstanceID: id, State: state, NodeID: "n1",
			VMID: "t", Tag: "v1"}, SlotHeld: true})
	}
	if _, err := st.JoinNode(ctx, apiv1.NodeReport{NodeID: "n2", NodeName: "n2", Capacity: 3}, nil, 30); err != nil {
		t.Fatal(err)
	}
	recs = append(recs, store.InstanceRecord{Instance: apiv1.Instance{InstanceID: "elsewhere", State: apiv1.StateStarted,
		NodeID: "n2", VMID: "t", Tag: "v1"}, SlotHeld: true})
	if err := st.CreateInstances(ctx, recs); err != nil {
		t.Fatal(err)
	}
	if err := st.ReleaseLease(ctx, lease); err != nil {
		t.Fatal(err)
	}
	read := func() map[string]store.InstanceRecord {
		out := map[string]store.InstanceRecord{}
		for _, id := range []string{"booting", "running", "stopping"} {
			r, err := st.GetInstance(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			out[id] = r
		}
		return out
	}
	return st, read
}

// always is a leadership fence that holds (a key nobody writes).
var always = clientv3.Compare(clientv3.CreateRevision("/test/no-such-key"), "=", 0)

func pass(t *testing.T, s *scheduler.Scheduler) {
	t.Helper()
	if err := s.Pass(context.Background(), always); err != nil {
		t.Fatal(err)
	}
}

// TestLostNodeWorkWaitsForTheFence: a node without its lease may still run
// its VMs until it fences itself, so its instances stay bound to it (never
// re-placed, failed or counted terminated) until FenceMargin after a pass
// first saw it gone. They used to be re-placed at once: a job ran on two
// nodes.
func TestLostNodeWorkWaitsForTheFence(t *testing.T) {
	st, read := lostNodeCloud(t)
	s := scheduler.New(st, scheduler.Config{FenceMargin: time.Hour}, testenv.Logger(t))
	for range 3 {
		pass(t, s)
	}
	for id, r := range read() {
		if r.NodeID != "n1" || !r.SlotHeld {
			t.Errorf("%s released within the fencing margin: state %s node %q slot %v", id, r.State, r.NodeID, r.SlotHeld)
		}
	}
}

// TestLostNodeWorkIsReleasedAfterTheFence: once the margin has passed, a
// lost node's work that never booted is placed again, a running instance
// fails, and one being terminated is Terminated; every slot is released.
func TestLostNodeWorkIsReleasedAfterTheFence(t *testing.T) {
	st, read := lostNodeCloud(t)
	s := scheduler.New(st, scheduler.Config{FenceMargin: time.Nanosecond}, testenv.Logger(t))
	pass(t, s) // first sight: the margin starts
	for id, r := range read() {
		if !r.SlotHeld {
			t.Fatalf("%s released by the pass that first saw its node gone", id)
		}
	}
	pass(t, s)
	got := read()
	if r := got["booting"]; r.State != apiv1.StateScheduling || r.NodeID != "" || r.SlotHeld {
		t.Errorf("never-started instance: state %s node %q slot %v, want Scheduling for another node", r.State, r.NodeID, r.SlotHeld)
	}
	if r := got["running"]; r.State != apiv1.StateError || r.SlotHeld {
		t.Errorf("started instance: state %s slot %v, want Error, released", r.State, r.SlotHeld)
	}
	if r := got["stopping"]; r.State != apiv1.StateTerminated || r.SlotHeld {
		t.Errorf("terminating instance: state %s slot %v, want Terminated, released", r.State, r.SlotHeld)
	}
	// A live node's work is not touched by another node's loss.
	if r, err := st.GetInstance(context.Background(), "elsewhere"); err != nil || r.State != apiv1.StateStarted || !r.SlotHeld || r.NodeID != "n2" {
		t.Errorf("the live node's instance after n1's loss: %s on %q slot %v (%v), want Started on n2", r.State, r.NodeID, r.SlotHeld, err)
	}
}

// TestNodeBackRestartsTheMargin: a node that re-joins within the margin
// keeps its work, and a later loss is timed from then, not from the first.
func TestNodeBackRestartsTheMargin(t *testing.T) {
	st, read := lostNodeCloud(t)
	ctx := context.Background()
	s := scheduler.New(st, scheduler.Config{FenceMargin: time.Nanosecond}, testenv.Logger(t))
	pass(t, s) // n1 seen gone
	lease, err := st.JoinNode(ctx, apiv1.NodeReport{NodeID: "n1", NodeName: "n1", Capacity: 3}, nil, 30)
	if err != nil {
		t.Fatal(err)
	}
	pass(t, s) // n1 back
	if err := st.ReleaseLease(ctx, lease); err != nil {
		t.Fatal(err)
	}
	pass(t, s) // gone again: a new first sight
	for id, r := range read() {
		if r.NodeID != "n1" || !r.SlotHeld {
			t.Errorf("%s released on the first pass after its node went again: state %s", id, r.State)
		}
	}
	pass(t, s)
	if r := read()["running"]; r.SlotHeld {
		t.Errorf("still held after the margin: %+v", r)
	}
}

// TestPassWritesReasonsOnceAndReports: a pass writes a waiting instance's
// reason, and a pass that finds the same reason writes nothing; an
// instance that failed on every eligible node ends in Error; each
// placement and each pass is reported to the hooks (metrics).
func TestPassWritesReasonsOnceAndReports(t *testing.T) {
	_, st := testenv.StoreAt(t, "")
	ctx := context.Background()
	if _, err := st.JoinNode(ctx, apiv1.NodeReport{NodeID: "n1", NodeName: "n1", Capacity: 1, HostArch: apiv1.ArchARM64}, nil, 60); err != nil {
		t.Fatal(err)
	}
	rec := func(id string, mods ...func(*store.InstanceRecord)) store.InstanceRecord {
		r := store.InstanceRecord{Instance: apiv1.Instance{InstanceID: id, State: apiv1.StateScheduling, VMID: "t", Tag: "v1",
			Arch: apiv1.ArchARM64, CrTime: time.Now().UTC()}}
		for _, m := range mods {
			m(&r)
		}
		return r
	}
	if err := st.CreateInstances(ctx, []store.InstanceRecord{
		rec("first", func(r *store.InstanceRecord) { r.Priority = 1 }),
		rec("second", func(r *store.InstanceRecord) { r.Priority = 2 }),
		rec("failed", func(r *store.InstanceRecord) { r.FailedNodes = []string{"n1"}; r.Message = "pull failed" }),
	}); err != nil {
		t.Fatal(err)
	}
	passes, placed := 0, 0
	s := scheduler.New(st, scheduler.Config{OnPass: func(time.Duration) { passes++ }, OnPlaced: func(time.Duration) { placed++ }},
		testenv.Logger(t))
	pass(t, s)
	if passes != 1 || placed != 1 {
		t.Fatalf("hooks after one pass placing one: %d passes, %d placed", passes, placed)
	}
	get := func(id string) store.InstanceRecord {
		r, err := st.GetInstance(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := get("first"); r.NodeID != "n1" || !r.SlotHeld {
		t.Fatalf("the first instance: node %q", r.NodeID)
	}
	waiting := get("second")
	if waiting.Message != "the only active node is at capacity" {
		t.Fatalf("the waiting instance's reason: %q", waiting.Message)
	}
	if r := get("failed"); r.State != apiv1.StateError || !strings.Contains(r.Message, "failed on every eligible node") {
		t.Fatalf("an instance that failed everywhere: %s %q", r.State, r.Message)
	}
	pass(t, s)
	if again := get("second"); !again.TS.Equal(waiting.TS) {
		t.Fatalf("a pass with the same reason wrote the instance again (at %v, was %v)", again.TS, waiting.TS)
	}
	if passes != 2 || placed != 1 {
		t.Fatalf("hooks after a second pass: %d passes, %d placed", passes, placed)
	}
}
