package store

import (
	"testing"

	apiv1 "github.com/corral-build/corral/api/v1"
)

// TestUsageCountsTemplateResources: an instance started without vcpu/vram
// holds what its VM got (the template's cpu and ram, from vminfo); usage
// used to count only explicit overrides, so such instances weighed nothing.
func TestUsageCountsTemplateResources(t *testing.T) {
	rec := func(id string, spec apiv1.StartSpec, info *apiv1.VMInfo, held bool) InstanceEntry {
		return InstanceEntry{InstanceRecord: InstanceRecord{
			Instance: apiv1.Instance{InstanceID: id, NodeID: "n1", State: apiv1.StateStarted, VMInfo: info},
			Spec:     spec, SlotHeld: held}}
	}
	snap := Snapshot{Instances: []InstanceEntry{
		rec("template-sized", apiv1.StartSpec{}, &apiv1.VMInfo{CPUCores: 4, RAM: "8G"}, true),
		// Its VM reports other figures than it asked (a driver rounding, a
		// template's own): what it asked is what it holds.
		rec("explicit", apiv1.StartSpec{VCPU: 2, VRAM: 2048}, &apiv1.VMInfo{CPUCores: 6, RAM: "16G"}, true),
		rec("not-booted", apiv1.StartSpec{}, nil, true),
		rec("released", apiv1.StartSpec{VCPU: 8}, nil, false),
	}}
	got := snap.Usage()["n1"]
	if want := (NodeUsage{Slots: 3, VCPU: 6, VRAM: 8192 + 2048}); got != want {
		t.Fatalf("usage %+v, want %+v", got, want)
	}
}
