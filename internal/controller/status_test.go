package controller

import (
	"strings"
	"testing"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/store"
)

// TestApplyStatus: every case of a node's report on an instance it holds,
// as a table: the state it leaves, whether the slot is still held, whether
// the assignment goes, and what the message says.
func TestApplyStatus(t *testing.T) {
	tests := []struct {
		name     string
		state    string // the instance's state when the report lands
		st       apiv1.InstanceStatus
		want     string
		held     bool
		unassign bool
		message  string // a part of the message; "" checks nothing
	}{
		{"booted", apiv1.StatePulling, apiv1.InstanceStatus{State: apiv1.StateStarted}, apiv1.StateStarted, true, false, ""},
		{"pull progress", apiv1.StatePulling, apiv1.InstanceStatus{State: apiv1.StatePulling, Progress: 0.5}, apiv1.StatePulling, true, false, ""},
		{"terminated", apiv1.StateStarted, apiv1.InstanceStatus{State: apiv1.StateTerminated}, apiv1.StateTerminated, false, true, ""},
		{"terminated while terminating", apiv1.StateTerminating, apiv1.InstanceStatus{State: apiv1.StateTerminated, Released: true}, apiv1.StateTerminated, false, true, ""},
		{"given back while terminating", apiv1.StateTerminating, apiv1.InstanceStatus{State: apiv1.StateScheduling, Requeue: true, Released: true}, apiv1.StateTerminated, false, true, ""},
		{"VM gone while terminating", apiv1.StateTerminating, apiv1.InstanceStatus{State: apiv1.StateError, Released: true}, apiv1.StateTerminated, false, true, ""},
		{"late progress while terminating", apiv1.StateTerminating, apiv1.InstanceStatus{State: apiv1.StateStarted}, apiv1.StateTerminating, true, false, ""},
		{"given back before starting", apiv1.StatePulling, apiv1.InstanceStatus{State: apiv1.StateScheduling, Requeue: true, Released: true, Message: "shut down"}, apiv1.StateScheduling, false, true, "gave it back before starting it: shut down"},
		{"given back after starting", apiv1.StateStarted, apiv1.InstanceStatus{State: apiv1.StateScheduling, Requeue: true, Released: true, Message: "fenced"}, apiv1.StateError, false, true, "fenced"},
		{"pull failed: elsewhere", apiv1.StatePulling, apiv1.InstanceStatus{State: apiv1.StateError, Replace: true, Released: true, Message: "no space"}, apiv1.StateScheduling, false, true, "no space; placing on another node"},
		// A VM that died on its own: the slot is free at once (the node has
		// no VM for it), the instance stays visible as Error until terminated.
		{"VM died", apiv1.StateStarted, apiv1.InstanceStatus{State: apiv1.StateError, Released: true, Message: "VM crashed"}, apiv1.StateError, false, false, "VM crashed"},
		{"error with the VM kept", apiv1.StateStarted, apiv1.InstanceStatus{State: apiv1.StateError, Message: "script failed"}, apiv1.StateError, true, false, "script failed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &store.InstanceRecord{Instance: apiv1.Instance{InstanceID: "i", State: tc.state, NodeID: "n1"}, SlotHeld: true}
			u := applyStatus(r, tc.st)
			if r.State != tc.want || r.SlotHeld != tc.held || u.Unassign != tc.unassign {
				t.Fatalf("state %s held %v unassign %v; want %s held %v unassign %v", r.State, r.SlotHeld, u.Unassign, tc.want, tc.held, tc.unassign)
			}
			if !strings.Contains(r.Message, tc.message) {
				t.Fatalf("message %q, want it to say %q", r.Message, tc.message)
			}
			if r.TS.IsZero() {
				t.Fatal("the record's time was not set")
			}
			if tc.want == apiv1.StateTerminated && r.FinishedAt.IsZero() {
				t.Fatal("a terminated instance has no finish time")
			}
			if tc.want == apiv1.StateScheduling && (r.NodeID != "" || r.VMInfo != nil) {
				t.Fatalf("an instance placed again keeps node %q", r.NodeID)
			}
		})
	}
}

// TestApplyStatusKeepsTheTail: a report's script output is cut to its tail
// and its VM info stamped when the node sent it.
func TestApplyStatusKeepsTheTail(t *testing.T) {
	r := &store.InstanceRecord{Instance: apiv1.Instance{InstanceID: "i", State: apiv1.StateStarted, NodeID: "n1"}, SlotHeld: true}
	out := strings.Repeat("x", 2*apiv1.MaxScriptOutput) + "end"
	applyStatus(r, apiv1.InstanceStatus{State: apiv1.StateStarted, StartupScript: &apiv1.ScriptResult{Stdout: out},
		VMInfo: &apiv1.VMInfo{}})
	if r.StartupScript == nil || len(r.StartupScript.Stdout) > apiv1.MaxScriptOutput+200 || !strings.HasSuffix(r.StartupScript.Stdout, "end") {
		t.Fatalf("script output kept: %d bytes", len(r.StartupScript.Stdout))
	}
	if r.VMInfo == nil || r.VMInfo.Timestamp.IsZero() {
		t.Fatalf("vm info: %+v", r.VMInfo)
	}
}
