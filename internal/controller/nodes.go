package controller

import (
	"context"
	"errors"
	"slices"
	"strings"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/store"
)

// ListNodes returns every node (or just id) with live state and usage.
func (s *Service) ListNodes(ctx context.Context, id string) ([]apiv1.Node, error) {
	snap, err := s.st.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	groups := map[string]apiv1.Group{}
	for _, g := range snap.Groups {
		groups[g.ID] = g
	}
	used := snap.Usage()
	out := []apiv1.Node{}
	for _, n := range snap.Nodes {
		r := n.Report
		if id != "" && r.NodeID != id {
			continue
		}
		u := used[r.NodeID]
		node := apiv1.Node{
			NodeID: r.NodeID, NodeName: r.NodeName, IPAddress: r.IPAddress, State: n.State(),
			Capacity: n.Capacity(), CapacityMode: "number", CPUCount: r.CPUCount, RAM: r.RAMMB / 1024,
			VMCount: u.Slots, VCPUCount: u.VCPU, VRAM: u.VRAM, CPUUtil: r.CPUUtil, RAMUtil: r.RAMUtil,
			FreeDiskSpace: max(r.FreeDiskSpace, 0), DiskSize: max(r.DiskSize, 0), HostArch: r.HostArch,
			Templates: slices.Clone(r.Templates), Groups: []apiv1.Group{}, Driver: r.Driver,
			AnkaVersion:  apiv1.AnkaVersion{Product: "Corral " + r.Driver + " driver", Version: r.AgentVersion},
			AgentVersion: r.AgentVersion, LastUpdated: n.ReportedAt, USBDevices: []string{},
		}
		if !n.ReportedAt.IsZero() {
			node.Timestamp = n.ReportedAt.Unix()
		}
		if node.Templates == nil {
			node.Templates = []apiv1.NodeTemplate{}
		}
		node.AnkaDiskUsage = max(r.TemplateDiskUsage, 0) // what the template cache holds, as the reference reports
		for _, gid := range n.Groups {
			if g, ok := groups[gid]; ok {
				node.Groups = append(node.Groups, g)
			}
		}
		out = append(out, node)
	}
	if id != "" && len(out) == 0 {
		return nil, ErrNotFound
	}
	slices.SortFunc(out, func(a, b apiv1.Node) int { return strings.Compare(a.NodeName, b.NodeName) })
	return out, nil
}

// ConfigureNode changes a node's capacity, limits or drain mode.
func (s *Service) ConfigureNode(ctx context.Context, req apiv1.NodeConfigRequest) error {
	if req.NodeID == "" {
		return fieldErr("node_id", "required")
	}
	switch {
	case req.MaxVMCount != nil && req.Capacity != nil && *req.MaxVMCount != *req.Capacity:
		return fieldErr("max_vm_count", "is capacity: give one of them, or the same value")
	case req.MaxVMCount != nil:
		req.Capacity = req.MaxVMCount
	}
	switch {
	case req.CapacityMode != nil && *req.CapacityMode != "number":
		return fieldErr("capacity_mode", "only \"number\" is supported (capacity counts instances; limit resources with max_vcpu_count and max_vram)")
	case req.Name != nil:
		return fieldErr("name", "not supported: a node's name is the agent's (--name), reported at each join")
	case len(req.VCPUOverride) > 0 && string(req.VCPUOverride) != "null":
		return fieldErr("vcpu_override", "not supported: nodes report their CPUs; limit what instances use with max_vcpu_count")
	case len(req.RAMOverride) > 0 && string(req.RAMOverride) != "null":
		return fieldErr("ram_override", "not supported: nodes report their RAM; limit what instances use with max_vram")
	}
	for name, v := range map[string]*apiv1.FlexInt{"capacity": req.Capacity, "max_vcpu_count": req.MaxVCPU, "max_vram": req.MaxVRAM} {
		if v != nil && (*v < 0 || *v > 10000000) {
			return fieldErr(name, "must be a non-negative integer")
		}
	}
	_, err := s.st.UpdateNode(ctx, req.NodeID, func(n *store.NodeRecord) error {
		if req.Capacity != nil {
			c := int(*req.Capacity)
			n.CapacityOverride = &c
		}
		if req.MaxVCPU != nil {
			n.MaxVCPU = int(*req.MaxVCPU)
		}
		if req.MaxVRAM != nil {
			n.MaxVRAM = int(*req.MaxVRAM)
		}
		if req.DrainMode != nil {
			n.Drain = bool(*req.DrainMode)
		}
		return nil
	})
	return notFound(err)
}

// DisjoinNode removes a node; its agent is told on its next heartbeat and its
// instances are released by the scheduler.
func (s *Service) DisjoinNode(ctx context.Context, id string) error {
	if id == "" {
		return fieldErr("node_id", "required")
	}
	err := notFound(s.st.DeleteNode(ctx, id))
	if err == nil {
		s.log.Info("node disjoined", "node", id)
	}
	return err
}

// SetNodeGroups adds (or removes) nodes to a group.
// SetNodesGroups adds nodes to (or removes them from) every group listed,
// after checking every group exists.
func (s *Service) SetNodesGroups(ctx context.Context, groupIDs, nodeIDs []string, add bool) error {
	if len(groupIDs) == 0 {
		return fieldErr("group_ids", "required: a list of group ids")
	}
	if len(nodeIDs) == 0 {
		return fieldErr("node_ids", "required: node_id or a list of node ids")
	}
	for _, g := range groupIDs {
		if _, err := s.st.GetGroup(ctx, g); errors.Is(err, store.ErrNotFound) {
			return fieldErr("group_ids", "no group with id %q", g)
		} else if err != nil {
			return err
		}
	}
	for _, g := range groupIDs {
		if err := s.SetNodeGroups(ctx, g, nodeIDs, add); err != nil {
			return err
		}
	}
	return nil
}

func (s *Service) SetNodeGroups(ctx context.Context, groupID string, nodeIDs []string, add bool) error {
	if _, err := s.st.GetGroup(ctx, groupID); err != nil {
		return notFound(err)
	}
	if len(nodeIDs) == 0 {
		return fieldErr("node_ids", "required: a list of node ids")
	}
	for _, id := range nodeIDs {
		if _, err := s.st.GetNode(ctx, id); errors.Is(err, store.ErrNotFound) {
			return fieldErr("node_ids", "no node with id %q", id)
		}
	}
	for _, id := range nodeIDs {
		_, err := s.st.UpdateNode(ctx, id, func(n *store.NodeRecord) error {
			n.Groups = slices.DeleteFunc(n.Groups, func(g string) bool { return g == groupID })
			if add {
				n.Groups = append(n.Groups, groupID)
			}
			return nil
		})
		if err != nil {
			return notFound(err)
		}
	}
	return nil
}
