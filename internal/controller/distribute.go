package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/store"
)

// Distribute asks nodes to pull a template now, so the first instances of a
// new tag start without waiting for the pull. Without node_ids or group_id
// it targets every active node.
func (s *Service) Distribute(ctx context.Context, req apiv1.DistributeRequest) (string, error) {
	if req.TemplateID == "" {
		return "", fieldErr("template_id", "required")
	}
	tmpl, err := s.registry.GetTemplate(ctx, req.TemplateID)
	if err != nil {
		return "", err
	}
	version, err := resolveTag(tmpl, apiv1.StartSpec{Tag: req.Tag})
	if err != nil {
		return "", err
	}
	snap, err := s.st.Snapshot(ctx)
	if err != nil {
		return "", err
	}
	now := time.Now().UTC()
	d := apiv1.Distribution{RequestID: apiv1.NewID(), TemplateID: tmpl.ID, Tag: version.Tag, Nodes: map[string]string{},
		CrTime: now, TS: now}
	known := map[string]store.NodeEntry{}
	for _, n := range snap.Nodes {
		known[n.Report.NodeID] = n
	}
	switch {
	case len(req.NodeIDs) > 0:
		for _, id := range req.NodeIDs {
			if _, ok := known[id]; !ok {
				return "", fieldErr("node_ids", "no node with id %q", id)
			}
			d.Nodes[id] = "pending"
		}
	default:
		if req.GroupID != "" {
			if _, err := s.st.GetGroup(ctx, req.GroupID); errors.Is(err, store.ErrNotFound) {
				return "", fieldErr("group_id", "no group with id %q", req.GroupID)
			}
		}
		for _, n := range snap.Nodes {
			if n.Alive && (req.GroupID == "" || n.InGroup(req.GroupID)) {
				d.Nodes[n.Report.NodeID] = "pending"
			}
		}
		if len(d.Nodes) == 0 {
			return "", fieldErr("node_ids", "no active node to distribute to")
		}
	}
	p := apiv1.Prefetch{RequestID: d.RequestID, VMID: tmpl.ID, Tag: version.Tag, TemplateName: tmpl.Name}
	if err := s.st.CreateDistribution(ctx, d, p); err != nil {
		return "", err
	}
	s.log.Info("template distribution requested", "template", tmpl.Name, "tag", version.Tag, "nodes", len(d.Nodes), "request", d.RequestID)
	s.record(apiv1.Event{Type: apiv1.EventTemplateDistributed, TemplateID: tmpl.ID, Tag: version.Tag, GroupID: req.GroupID,
		Message: fmt.Sprintf("%s:%s distributed to %d node(s), request %s", tmpl.Name, version.Tag, len(d.Nodes), d.RequestID)})
	return d.RequestID, nil
}

// Distribution returns a distribute request's status.
func (s *Service) Distribution(ctx context.Context, id string) (apiv1.DistributionView, error) {
	d, err := s.st.GetDistribution(ctx, id)
	return d.View(), notFound(err)
}

// Distributions lists every distribute request.
func (s *Service) Distributions(ctx context.Context) ([]apiv1.DistributionView, error) {
	ds, err := s.st.ListDistributions(ctx)
	out := []apiv1.DistributionView{}
	for _, d := range ds {
		out = append(out, d.View())
	}
	return out, err
}

// CancelDistribution drops a request; nodes not yet pulling skip it.
func (s *Service) CancelDistribution(ctx context.Context, id string) error {
	return notFound(s.st.CancelDistribution(ctx, id))
}

// FinishPrefetch records a node's outcome of a distribute request.
func (s *Service) FinishPrefetch(ctx context.Context, r apiv1.PrefetchResult) error {
	outcome := "done"
	if r.Error != "" {
		outcome = "error: " + r.Error
	}
	return notFound(s.st.FinishPrefetch(ctx, r.NodeID, r.RequestID, outcome))
}

// RemoveFromNodes asks the nodes that hold a template (a tag of it, when
// tag is set; only nodeIDs or a group's, when given) to delete it from their
// caches. Nodes keep templates an instance uses and say so. Its outcome is
// followed like a distribution's.
func (s *Service) RemoveFromNodes(ctx context.Context, templateID, tag string, nodeIDs []string, groupID string) (apiv1.RemoveFromNodesResponse, error) {
	out := apiv1.RemoveFromNodesResponse{NodeIDs: []string{}}
	if templateID == "" {
		return out, fieldErr("id", "required as ?id=")
	}
	snap, err := s.st.Snapshot(ctx)
	if err != nil {
		return out, err
	}
	if groupID != "" {
		if _, err := s.st.GetGroup(ctx, groupID); errors.Is(err, store.ErrNotFound) {
			return out, fieldErr("group_id", "no group with id %q", groupID)
		}
	}
	for _, id := range nodeIDs {
		if !slices.ContainsFunc(snap.Nodes, func(n store.NodeEntry) bool { return n.Report.NodeID == id }) {
			return out, fieldErr("node_id", "no node with id %q", id)
		}
	}
	now := time.Now().UTC()
	d := apiv1.Distribution{RequestID: apiv1.NewID(), TemplateID: templateID, Tag: tag, Nodes: map[string]string{}, CrTime: now, TS: now}
	name := ""
	for _, n := range snap.Nodes {
		id := n.Report.NodeID
		if len(nodeIDs) > 0 && !slices.Contains(nodeIDs, id) || groupID != "" && !n.InGroup(groupID) {
			continue
		}
		for _, t := range n.Report.Templates {
			if t.UUID == templateID && (tag == "" || t.Tag == tag) {
				d.Nodes[id], name = "pending", t.Name
			}
		}
	}
	if len(d.Nodes) == 0 {
		return out, nil // no node holds it: nothing to send
	}
	p := apiv1.Prefetch{RequestID: d.RequestID, VMID: templateID, Tag: tag, TemplateName: name, Remove: true}
	if err := s.st.CreateDistribution(ctx, d, p); err != nil {
		return out, err
	}
	for id := range d.Nodes {
		out.NodeIDs = append(out.NodeIDs, id)
	}
	slices.Sort(out.NodeIDs)
	out.RequestsSent, out.RequestID = len(out.NodeIDs), d.RequestID
	s.log.Info("template removal from nodes requested", "template", templateID, "tag", tag, "nodes", len(d.Nodes), "request", d.RequestID)
	return out, nil
}
