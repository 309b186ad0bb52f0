// Package client is the Go client of Corral's controller API. The node agent,
// the CLI and the tests talk to controllers only through it.
package client

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/retry"
)

// FailError is a FAIL envelope returned by the controller or the registry.
type FailError struct {
	HTTPStatus int
	Message    string
	Registry   bool // the registry answered (else the controller)
}

func (e *FailError) Error() string {
	server := "controller"
	if e.Registry {
		server = "registry"
	}
	if e.HTTPStatus == http.StatusOK {
		// The reference API's FAILs come in HTTP 200: the status says nothing.
		return fmt.Sprintf("%s: %s", server, e.Message)
	}
	return fmt.Sprintf("%s: %s (HTTP %d)", server, e.Message, e.HTTPStatus)
}

// Agent-protocol outcomes the node acts on.
var (
	ErrDisjoined    = errors.New("node was disjoined by an administrator")
	ErrLeaseExpired = errors.New("node lease expired")
	ErrUnauthorized = errors.New("authentication required: credentials or join token rejected")
)

// Controller talks to one or more controller URLs, moving to the next URL
// when one cannot be reached.
type Controller struct {
	urls      []string
	token     string
	rootToken string
	http      *http.Client
	cur       atomic.Int64
	nodeToken atomic.Value // string: the node's own credential, after join
	// Retry governs idempotent calls (GET); others are tried once per
	// controller URL. PerAttempt bounds every call.
	Retry retry.Policy
}

// UseTLS sets how the client trusts the controllers and proves itself.
func (c *Controller) UseTLS(cfg *tls.Config) {
	if cfg != nil {
		tr := newTransport(8)
		tr.TLSClientConfig = cfg
		c.http = &http.Client{Transport: tr}
	}
}

// UseNodeToken makes every agent call but joining present the node's own
// credential (JoinResponse.NodeToken) instead of the join token.
func (c *Controller) UseNodeToken(token string) { c.nodeToken.Store(token) }

// UseRootToken authenticates API calls with the controller's root token
// (HTTP Basic, user root), for controllers with --enable-auth.
func (c *Controller) UseRootToken(token string) { c.rootToken = token }

// New returns a client; token is the join token (agent calls) or empty.
func New(urls []string, token string) (*Controller, error) {
	if len(urls) == 0 {
		return nil, errors.New("no controller URL")
	}
	own := make([]string, len(urls)) // never the caller's slice
	for i, u := range urls {
		parsed, err := url.Parse(u)
		if err != nil || parsed.Scheme == "" || parsed.Host == "" {
			return nil, fmt.Errorf("controller URL %q: want http(s)://host:port", u)
		}
		own[i] = strings.TrimRight(u, "/")
	}
	return &Controller{urls: own, token: token, http: &http.Client{Transport: newTransport(8)}, Retry: retry.Default}, nil
}

// URL is the controller currently in use.
func (c *Controller) URL() string { return c.urls[int(c.cur.Load())%len(c.urls)] }

// do sends a request and decodes the envelope's body into out (may be nil).
// A GET is retried under c.Retry; every call is bounded by PerAttempt.
func (c *Controller) do(ctx context.Context, method, path string, in, out any) error {
	return c.doWithin(ctx, c.Retry.PerAttempt, method, path, in, out)
}

// doWithin is do with each attempt bounded by perAttempt (long polls).
func (c *Controller) doWithin(ctx context.Context, perAttempt time.Duration, method, path string, in, out any) error {
	var payload []byte
	if in != nil {
		var err error
		if payload, err = json.Marshal(in); err != nil {
			return fmt.Errorf("encode %s %s: %w", method, path, err)
		}
	}
	p := c.Retry
	p.PerAttempt = perAttempt
	if method != http.MethodGet {
		p.Attempts = 1 // not idempotent: a lost answer must not start twice
	}
	return p.Do(ctx, func(ctx context.Context) error {
		err := c.once(ctx, method, path, payload, out)
		var fe *FailError
		if errors.As(err, &fe) && fe.HTTPStatus < 500 || errors.Is(err, ErrDisjoined) ||
			errors.Is(err, ErrLeaseExpired) || errors.Is(err, ErrUnauthorized) {
			return retry.Permanent(err)
		}
		return err
	})
}

// once tries each controller URL in turn until one answers.
func (c *Controller) once(ctx context.Context, method, path string, payload []byte, out any) error {
	var lastErr error
	for attempt := 0; attempt < len(c.urls); attempt++ {
		idx := int(c.cur.Load())
		base := c.urls[idx%len(c.urls)]
		req, err := http.NewRequestWithContext(ctx, method, base+path, bytes.NewReader(payload))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		nodeToken, _ := c.nodeToken.Load().(string)
		switch {
		case nodeToken != "" && path != joinPath:
			req.Header.Set("Authorization", "Bearer "+nodeToken)
		case c.token != "":
			req.Header.Set("Authorization", "Bearer "+c.token)
		case c.rootToken != "":
			req.SetBasicAuth("root", c.rootToken)
		}
		resp, err := c.http.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			lastErr = fmt.Errorf("%s %s%s: %w", method, base, path, err)
			c.cur.CompareAndSwap(int64(idx), int64(idx+1)) // fail over
			continue
		}
		return decodeEnvelope(resp, out, method+" "+path)
	}
	return lastErr
}

func decodeEnvelope(resp *http.Response, out any, what string) error {
	return decodeAnswer(resp, out, what, true)
}

// decodeRegistryEnvelope is decodeEnvelope for the registry, whose 409s
// (missing chunks, tag exists) are FAILs to act on, not the agent
// protocol's lease outcomes.
func decodeRegistryEnvelope(resp *http.Response, out any, what string) error {
	return decodeAnswer(resp, out, what, false)
}

// decodeAnswer decodes an envelope; agent maps the agent protocol's
// 409/410 to ErrLeaseExpired/ErrDisjoined.
func decodeAnswer(resp *http.Response, out any, what string, agent bool) error {
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s: read response: %w", what, err)
	}
	var env apiv1.Envelope
	if err := json.Unmarshal(data, &env); err != nil {
		if resp.StatusCode >= 400 {
			// A proxy's or load balancer's own page: the status still says
			// what to do (a 4xx is not retried).
			return &FailError{HTTPStatus: resp.StatusCode, Registry: !agent,
				Message: fmt.Sprintf("%s: not a JSON envelope: %.200s", what, bytes.TrimSpace(data))}
		}
		return fmt.Errorf("%s: HTTP %d, not a JSON envelope: %.200s", what, resp.StatusCode, data)
	}
	if env.Status != apiv1.StatusOK {
		switch resp.StatusCode {
		case http.StatusGone:
			if agent {
				return ErrDisjoined
			}
		case http.StatusConflict:
			if agent {
				return ErrLeaseExpired
			}
		case http.StatusUnauthorized:
			return ErrUnauthorized
		}
		return &FailError{HTTPStatus: resp.StatusCode, Message: env.Message, Registry: !agent}
	}
	if out != nil && len(env.Body) > 0 {
		if err := json.Unmarshal(env.Body, out); err != nil {
			return fmt.Errorf("%s: decode body: %w", what, err)
		}
	}
	return nil
}

// Status returns GET /api/v1/status.
func (c *Controller) Status(ctx context.Context) (apiv1.Status, error) {
	var s apiv1.Status
	return s, c.do(ctx, http.MethodGet, "/api/v1/status", nil, &s)
}

// StartInstances posts a start request and returns the instance ids.
func (c *Controller) StartInstances(ctx context.Context, req map[string]any) ([]string, error) {
	var ids []string
	return ids, c.do(ctx, http.MethodPost, "/api/v1/vm", req, &ids)
}

// Instance returns one instance.
func (c *Controller) Instance(ctx context.Context, id string) (apiv1.Instance, error) {
	var in apiv1.Instance
	return in, c.do(ctx, http.MethodGet, "/api/v1/vm?id="+url.QueryEscape(id), nil, &in)
}

// Instances lists instances; query is e.g. "state=Started".
func (c *Controller) Instances(ctx context.Context, query string) ([]apiv1.InstanceListItem, error) {
	var items []apiv1.InstanceListItem
	path := "/api/v1/vm"
	if query != "" {
		path += "?" + query
	}
	return items, c.do(ctx, http.MethodGet, path, nil, &items)
}

// Terminate ends an instance.
func (c *Controller) Terminate(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/vm", apiv1.IDRequest{ID: id}, nil)
}

// Nodes lists nodes.
func (c *Controller) Nodes(ctx context.Context) ([]apiv1.Node, error) {
	var nodes []apiv1.Node
	return nodes, c.do(ctx, http.MethodGet, "/api/v1/node", nil, &nodes)
}

// ConfigureNode changes a node's settings (PUT /api/v1/node/config): req
// holds node_id and any of capacity, drain_mode, max_vcpu_count, max_vram.
func (c *Controller) ConfigureNode(ctx context.Context, req map[string]any) error {
	return c.do(ctx, http.MethodPut, "/api/v1/node/config", req, nil)
}

// DisjoinNode removes a node from the cloud.
func (c *Controller) DisjoinNode(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/node", apiv1.NodeIDRequest{NodeID: id}, nil)
}

// Templates lists the registry's templates as the controller sees them
// (GET /api/v1/registry/vm).
func (c *Controller) Templates(ctx context.Context) ([]apiv1.Template, error) {
	var ts []apiv1.Template
	return ts, c.do(ctx, http.MethodGet, "/api/v1/registry/vm", nil, &ts)
}

// Groups lists node groups.
func (c *Controller) Groups(ctx context.Context) ([]apiv1.Group, error) {
	var gs []apiv1.Group
	return gs, c.do(ctx, http.MethodGet, "/api/v1/group", nil, &gs)
}

// DeleteGroup deletes a node group.
func (c *Controller) DeleteGroup(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/group", map[string]string{"id": id}, nil)
}

// RemoveNodesFromGroup takes nodes out of a group.
func (c *Controller) RemoveNodesFromGroup(ctx context.Context, groupID string, nodeIDs ...string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/node/group/"+url.PathEscape(groupID), apiv1.NodeIDsRequest{NodeIDs: nodeIDs}, nil)
}

// CreateGroup creates a node group.
func (c *Controller) CreateGroup(ctx context.Context, name, description, fallback string) (apiv1.Group, error) {
	var g apiv1.Group
	return g, c.do(ctx, http.MethodPost, "/api/v1/group",
		map[string]string{"name": name, "description": description, "fallback_group_id": fallback}, &g)
}

// AddNodesToGroup puts nodes into a group.
func (c *Controller) AddNodesToGroup(ctx context.Context, groupID string, nodeIDs ...string) error {
	return c.do(ctx, http.MethodPost, "/api/v1/node/group/"+url.PathEscape(groupID), apiv1.NodeIDsRequest{NodeIDs: nodeIDs}, nil)
}

// WaitState polls an instance until it reaches state or ctx ends.
// SaveImage asks for a Started instance to be saved as a template tag and
// returns the request id.
func (c *Controller) SaveImage(ctx context.Context, req apiv1.ImageRequest) (string, error) {
	var out struct {
		RequestID string `json:"request_id"`
	}
	err := c.do(ctx, http.MethodPost, "/api/v1/image", req, &out)
	return out.RequestID, err
}

// Image returns a save-image request's state.
func (c *Controller) Image(ctx context.Context, requestID string) (apiv1.Image, error) {
	var img apiv1.Image
	err := c.do(ctx, http.MethodGet, "/api/v1/image?id="+url.QueryEscape(requestID), nil, &img)
	return img, err
}

// PutPermissionGroup creates (create) or replaces a permission group.
func (c *Controller) PutPermissionGroup(ctx context.Context, g apiv1.PermissionGroup, create bool) error {
	method := http.MethodPut
	if create {
		method = http.MethodPost
	}
	return c.do(ctx, method, "/api/v1/permission-group", g, nil)
}

// WaitState polls an instance until it is in state. It ends early, with
// the instance's own reason, when the instance is in a state it cannot
// leave for the one asked (Terminated; Error, which only ends), or is not
// found; at ctx's end it says what the instance last was and why.
func (c *Controller) WaitState(ctx context.Context, id, state string) (apiv1.Instance, error) {
	return c.WaitStateFunc(ctx, id, state, nil)
}

// WaitStateFunc is WaitState calling changed (when not nil) each time the
// instance's state or message changes while it waits (a CLI's progress).
func (c *Controller) WaitStateFunc(ctx context.Context, id, state string, changed func(apiv1.Instance)) (apiv1.Instance, error) {
	var last apiv1.Instance
	for {
		in, err := c.Instance(ctx, id)
		var fe *FailError
		if err == nil && changed != nil && (in.State != last.State || in.Message != last.Message) {
			changed(in)
		}
		switch {
		case err == nil && in.State == state:
			return in, nil
		case err == nil:
			last = in
			if never(in.State, state) {
				return in, fmt.Errorf("instance %s is %s and will not be %s: %s", id, in.State, state, cmp.Or(in.Message, "no reason given"))
			}
		case errors.As(err, &fe) && (fe.HTTPStatus == http.StatusNotFound || fe.Message == apiv1.MsgNotFound):
			// (The reference answers an unknown id with a FAIL in HTTP 200.)
			return in, fmt.Errorf("instance %s: %w", id, err)
		}
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("instance %s: want %s, have %s (%s): %w", id, state, cmp.Or(last.State, "unknown"), last.Message, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// never reports whether an instance in state have can no longer reach want.
func never(have, want string) bool {
	switch have {
	case apiv1.StateTerminated:
		return true
	case apiv1.StateError:
		return want != apiv1.StateTerminating && want != apiv1.StateTerminated
	}
	return false
}
