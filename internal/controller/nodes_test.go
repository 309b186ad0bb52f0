package controller_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/store"
)

func flex(n int) *apiv1.FlexInt { v := apiv1.FlexInt(n); return &v }

// TestConfigureNode: capacity, limits and drain are stored as asked, within
// their bounds; the reference's fields Corral does not support are refused
// with why; the list shows every node as configured.
func TestConfigureNode(t *testing.T) {
	ctx := context.Background()
	c := newCloud(t, controller.Config{})
	if _, err := c.st.JoinNode(ctx, apiv1.NodeReport{NodeID: "n2", NodeName: "node-two", Capacity: 2}, nil, 600); err != nil {
		t.Fatal(err)
	}
	drain := apiv1.FlexBool(true)
	if err := c.svc.ConfigureNode(ctx, apiv1.NodeConfigRequest{NodeID: "n1", Capacity: flex(10000000), MaxVCPU: flex(8),
		MaxVRAM: flex(16384), DrainMode: &drain}); err != nil {
		t.Fatal(err)
	}
	n, err := c.st.GetNode(ctx, "n1")
	if err != nil || n.Capacity() != 10000000 || n.MaxVCPU != 8 || n.MaxVRAM != 16384 || !n.Drain {
		t.Fatalf("stored %+v %v", n, err)
	}
	mode := "percent"
	name := "renamed"
	for field, req := range map[string]apiv1.NodeConfigRequest{
		"node_id":        {},
		"capacity":       {NodeID: "n1", Capacity: flex(-1)},
		"max_vcpu_count": {NodeID: "n1", MaxVCPU: flex(10000001)},
		"max_vm_count":   {NodeID: "n1", Capacity: flex(2), MaxVMCount: flex(3)},
		"capacity_mode":  {NodeID: "n1", CapacityMode: &mode},
		"name":           {NodeID: "n1", Name: &name},
		"vcpu_override":  {NodeID: "n1", VCPUOverride: json.RawMessage(`4`)},
		"ram_override":   {NodeID: "n1", RAMOverride: json.RawMessage(`"8G"`)},
	} {
		if err := c.svc.ConfigureNode(ctx, req); fieldOf(err) != field {
			t.Errorf("%+v: %v, want an error about %s", req, err, field)
		}
	}
	// max_vm_count is the reference's name for capacity.
	if err := c.svc.ConfigureNode(ctx, apiv1.NodeConfigRequest{NodeID: "n2", MaxVMCount: flex(0)}); err != nil {
		t.Fatal(err)
	}
	if err := c.svc.ConfigureNode(ctx, apiv1.NodeConfigRequest{NodeID: "nope", Capacity: flex(1)}); !errors.Is(err, controller.ErrNotFound) {
		t.Fatalf("an unknown node: %v", err)
	}
	nodes, err := c.svc.ListNodes(ctx, "")
	if err != nil || len(nodes) != 2 {
		t.Fatalf("list: %+v %v", nodes, err)
	}
	got := map[string]apiv1.Node{}
	for _, n := range nodes {
		got[n.NodeID] = n
	}
	if got["n1"].State != apiv1.NodeDrain || got["n1"].Capacity != 10000000 || got["n2"].Capacity != 0 || got["n2"].State != apiv1.NodeActive {
		t.Fatalf("listed %+v", got)
	}
	if one, err := c.svc.ListNodes(ctx, "n2"); err != nil || len(one) != 1 || one[0].NodeName != "node-two" {
		t.Fatalf("list one: %+v %v", one, err)
	}
	if _, err := c.svc.ListNodes(ctx, "nope"); !errors.Is(err, controller.ErrNotFound) {
		t.Fatalf("list an unknown node: %v", err)
	}
}

// TestStartBounds: the cloud's waiting instances, one caller's, and the
// bytes unfinished instances keep are bounded; what a controller counts
// includes what others wrote before (its first count reads etcd), and a
// refused or failed start holds nothing.
func TestStartBounds(t *testing.T) {
	ctx := context.Background()
	c := newCloud(t, controller.Config{MaxWaiting: 3, MaxInstanceBytes: 40 << 10})
	// Written by another controller: 2 waiting, with 8 KiB of metadata each.
	meta, _ := json.Marshal(map[string]string{"blob": strings.Repeat("x", 8<<10-20)})
	for _, id := range []string{"w1", "w2"} {
		if err := c.st.CreateInstances(ctx, []store.InstanceRecord{{Instance: apiv1.Instance{InstanceID: id,
			State: apiv1.StateScheduling, VMID: "tmpl-1", Metadata: meta}}}); err != nil {
			t.Fatal(err)
		}
	}
	var limit *controller.LimitError
	if _, err := c.svc.StartInstances(ctx, apiv1.StartSpec{VMID: "tmpl-1", Count: 2}); !errors.As(err, &limit) || limit.Waiting != 2 {
		t.Fatalf("a start past the cloud's waiting bound: %v", err)
	}
	// 2 x (4 KiB + 8 KiB) = 24 KiB stored; one more instance (4 KiB) and a
	// 16 KiB script would pass 40 KiB.
	var bytesErr *controller.BytesLimitError
	if _, err := c.svc.StartInstances(ctx, apiv1.StartSpec{VMID: "tmpl-1", Count: 1, StartupScript: make([]byte, 16<<10)}); !errors.As(err, &bytesErr) {
		t.Fatalf("a start past the bytes bound: %v", err)
	}
	if _, err := c.svc.StartInstances(ctx, apiv1.StartSpec{VMID: "tmpl-1", Count: 1, GroupID: "nope"}); fieldOf(err) != "group_id" {
		t.Fatalf("a bad start: %v", err)
	}
	if ids, err := c.svc.StartInstances(ctx, apiv1.StartSpec{VMID: "tmpl-1", Count: 1}); err != nil || len(ids) != 1 {
		t.Fatalf("the one start that fits: %v %v", ids, err)
	}
	if _, err := c.svc.StartInstances(ctx, apiv1.StartSpec{VMID: "tmpl-1", Count: 1}); !errors.As(err, &limit) {
		t.Fatalf("a start after the bound was reached: %v", err)
	}
}
