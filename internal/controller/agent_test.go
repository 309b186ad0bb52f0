package controller

import (
	"testing"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/store"
)

// An instance being terminated whose node reports its VM gone (an Error
// with the slot released: the VM died or was lost) is Terminated. It stayed
// Terminating with the slot released, and the node's later Terminated
// report was ignored (no slot held): stranded for good (TestStorm under
// -race, seed 1796300498492703642).
func TestTerminatingInstanceReleasedIsTerminated(t *testing.T) {
	for _, st := range []apiv1.InstanceStatus{
		{State: apiv1.StateError, Message: "VM exited unexpectedly", Released: true},
		{State: apiv1.StateError, Message: "VM lost: the node agent restarted while it ran", Released: true},
		{State: apiv1.StateError, Message: "pull failed", Released: true, Replace: true},
	} {
		r := &store.InstanceRecord{Instance: apiv1.Instance{InstanceID: "i", State: apiv1.StateTerminating, NodeID: "n"}, SlotHeld: true}
		u := applyStatus(r, st)
		if r.State != apiv1.StateTerminated || r.SlotHeld || !u.Unassign || r.FinishedAt.IsZero() {
			t.Errorf("%q: state %s slot %v unassign %v", st.Message, r.State, r.SlotHeld, u.Unassign)
		}
	}
	// Without the release the VM may still exist: keep waiting.
	r := &store.InstanceRecord{Instance: apiv1.Instance{InstanceID: "i", State: apiv1.StateTerminating, NodeID: "n"}, SlotHeld: true}
	if applyStatus(r, apiv1.InstanceStatus{State: apiv1.StateStarted}); r.State != apiv1.StateTerminating || !r.SlotHeld {
		t.Errorf("a late Started report: %s slot %v", r.State, r.SlotHeld)
	}
}

// A node gives an instance back (Requeue) only when nothing of its job ran;
// if the cloud saw it Started, its job may have run and it is not run again.
func TestRequeueOfAStartedInstanceFails(t *testing.T) {
	for state, want := range map[string]string{
		apiv1.StateScheduling: apiv1.StateScheduling,
		apiv1.StatePulling:    apiv1.StateScheduling,
		apiv1.StateStarted:    apiv1.StateError,
	} {
		r := &store.InstanceRecord{Instance: apiv1.Instance{InstanceID: "i", State: state, NodeID: "n"}, SlotHeld: true}
		u := applyStatus(r, apiv1.InstanceStatus{State: apiv1.StateScheduling, Requeue: true, Released: true, Message: "VM lost while it booted"})
		if r.State != want || r.SlotHeld || !u.Unassign {
			t.Errorf("requeue from %s: state %s slot %v unassign %v, want %s, released", state, r.State, r.SlotHeld, u.Unassign, want)
		}
		if want == apiv1.StateScheduling && r.NodeID != "" {
			t.Errorf("requeue from %s kept node %q", state, r.NodeID)
		}
	}
}
