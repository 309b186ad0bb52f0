package client

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
)

// Join registers the node.
// A node that holds its own credential (UseNodeToken) presents it: a node
// already registered re-joins only with it.
func (c *Controller) Join(ctx context.Context, report apiv1.NodeReport) (apiv1.JoinResponse, error) {
	var resp apiv1.JoinResponse
	nodeToken, _ := c.nodeToken.Load().(string)
	return resp, c.do(ctx, http.MethodPost, joinPath, apiv1.JoinRequest{Report: report, NodeToken: nodeToken}, &resp)
}

const joinPath = "/api/v1/agent/join"

// Heartbeat renews the node's lease.
func (c *Controller) Heartbeat(ctx context.Context, nodeID string, leaseID int64) error {
	return c.do(ctx, http.MethodPost, "/api/v1/agent/heartbeat", apiv1.HeartbeatRequest{NodeID: nodeID, LeaseID: leaseID}, nil)
}

// Report sends the node's changed report.
func (c *Controller) Report(ctx context.Context, report apiv1.NodeReport) error {
	return c.do(ctx, http.MethodPost, "/api/v1/agent/report", report, nil)
}

// Leave ends the node's lease now: it is shutting down.
func (c *Controller) Leave(ctx context.Context, nodeID string, leaseID int64) error {
	return c.do(ctx, http.MethodPost, "/api/v1/agent/leave", apiv1.HeartbeatRequest{NodeID: nodeID, LeaseID: leaseID}, nil)
}

// SendStatus reports instance states.
func (c *Controller) SendStatus(ctx context.Context, nodeID string, st []apiv1.InstanceStatus) error {
	return c.do(ctx, http.MethodPost, "/api/v1/agent/status", apiv1.StatusReport{NodeID: nodeID, Instances: st}, nil)
}

// Assignments long-polls for the node's desired instances after revision since.
func (c *Controller) Assignments(ctx context.Context, nodeID string, since int64) (apiv1.Assignments, error) {
	var a apiv1.Assignments
	path := fmt.Sprintf("/api/v1/agent/assignments?node_id=%s&since=%d", url.QueryEscape(nodeID), since)
	// The server answers within its poll interval (30 s at most).
	return a, c.doWithin(ctx, 2*time.Minute, http.MethodGet, path, nil, &a)
}

// PrefetchDone reports a distribute request's outcome on this node.
func (c *Controller) PrefetchDone(ctx context.Context, r apiv1.PrefetchResult) error {
	return c.do(ctx, http.MethodPost, "/api/v1/agent/prefetch", r, nil)
}

// ImageDone reports a save-image request's outcome on this node.
func (c *Controller) ImageDone(ctx context.Context, r apiv1.ImageResult) error {
	return c.do(ctx, http.MethodPost, "/api/v1/agent/image", r, nil)
}

// RegistryToken asks the controller for a registry token granting these
// scopes ("repository:*:pull"), with the node's credential.
func (c *Controller) RegistryToken(ctx context.Context, scopes ...string) (apiv1.RegistryToken, error) {
	var t apiv1.RegistryToken
	q := url.Values{"service": {"corral-registry"}, "scope": scopes}
	return t, c.do(ctx, http.MethodGet, "/api/v1/registry/token?"+q.Encode(), nil, &t)
}
