// Package httpapi serves the controller's /api/v1 (the reference product's
// REST contract) and the node agents' protocol. Handlers decode, call the
// controller service and encode; errors map to FAIL messages in one table.
package httpapi

import (
	"github.com/corral-build/corral/internal/httpserve"
	"log/slog"
	"net/http"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/controller"
)

// API is the controller's HTTP surface.
type API struct {
	svc *controller.Service
	log *slog.Logger
	// authn finds who a request comes from (the API: its credentials).
	authn Authenticator
	// open limits the routes anyone may call without credentials
	// (handshakes, joins) per client address.
	open *httpserve.PerAddress
}

// Rate limits of the routes callers reach without credentials, per client
// address: a flood gets 429, real callers elsewhere are not slowed.
const (
	OpenRouteRate  = 10 // requests a second
	OpenRouteBurst = 40
)

// Authenticator finds a request's caller.
type Authenticator func(r *http.Request) (controller.Identity, error)

// New returns the handler serving /api/v1.
func New(svc *controller.Service, log *slog.Logger) http.Handler {
	return NewWithAuth(svc, log, func(r *http.Request) (controller.Identity, error) {
		return svc.Authenticate(r.Context(), r.Header.Get("Authorization"), ClientCert(r))
	})
}

// NewWithAuth is New with callers found by authn (the dashboard's session
// cookie): the same routes and the same permission checks.
func NewWithAuth(svc *controller.Service, log *slog.Logger, authn Authenticator) http.Handler {
	a := &API{svc: svc, log: log, authn: authn, open: httpserve.NewPerAddress(OpenRouteRate, OpenRouteBurst)}
	mux := http.NewServeMux()
	access := map[string]string{}
	for _, rt := range a.routes() {
		mux.Handle(rt.pattern, rt.handler)
		access[rt.pattern] = rt.access
	}
	mux.Handle("/api/v1/", a.handle(a.notFound))
	return recoverPanics(log, a.requireAuth(mux, access))
}

// Who may call a route that does not take a user permission.
const (
	AccessNode          = "node"           // a node's own credential (about itself)
	AccessJoin          = "join"           // the join token
	AccessTap           = "tap"            // anyone: the API-key handshake authenticates by its own protocol
	AccessRegistryToken = "registry-token" // any user or node: the grant is narrowed to what the caller may do
)

// A route is a pattern, who may call it (a user permission, or one of the
// Access kinds) and its handler.
type route struct {
	pattern, access string
	handler         http.Handler
}

// Route is a route as tests and docs see it.
type Route struct{ Pattern, Access string }

// Routes lists every route the controller serves with who may call it,
// from the one route table (the auth matrix calls each as each caller).
func Routes() []Route {
	var out []Route
	for _, rt := range (&API{}).routes() {
		out = append(out, Route{rt.pattern, rt.access})
	}
	return out
}

// Patterns lists every route's pattern ("METHOD /path").
func Patterns() []string {
	var out []string
	for _, rt := range Routes() {
		out = append(out, rt.Pattern)
	}
	return out
}

// routes is the controller's route table.
func (a *API) routes() []route {
	var rts []route
	h := a.handle
	mux := routeList{&rts}

	mux.Handle("GET /api/v1/status", apiv1.PermView, h(a.status))

	mux.Handle("GET /api/v1/node", apiv1.PermView, h(a.listNodes))
	mux.Handle("DELETE /api/v1/node", apiv1.PermManageNodes, h(a.disjoinNode))
	mux.Handle("PUT /api/v1/node/config", apiv1.PermManageNodes, h(a.configureNode))
	mux.Handle("POST /api/v1/node/config", apiv1.PermManageNodes, h(a.configureNode))
	mux.Handle("POST /api/v1/node/group/{group_id}", apiv1.PermManageNodes, h(a.addNodesToGroup))
	mux.Handle("DELETE /api/v1/node/group/{group_id}", apiv1.PermManageNodes, h(a.removeNodesFromGroup))
	mux.Handle("POST /api/v1/node/group", apiv1.PermManageNodes, h(a.addNodesToGroups))
	mux.Handle("DELETE /api/v1/node/group", apiv1.PermManageNodes, h(a.removeNodesFromGroups))

	mux.Handle("GET /api/v1/usb", apiv1.PermView, h(a.usb))
	mux.Handle("GET /api/v1/vlan", apiv1.PermView, h(a.vlan))
	mux.Handle("GET /api/v1/group", apiv1.PermView, h(a.listGroups))
	mux.Handle("POST /api/v1/group", apiv1.PermManageNodes, h(a.createGroup))
	mux.Handle("PUT /api/v1/group", apiv1.PermManageNodes, h(a.updateGroup))
	mux.Handle("DELETE /api/v1/group", apiv1.PermManageNodes, h(a.deleteGroup))

	mux.Handle("POST /api/v1/vm", apiv1.PermStartInstances, h(a.startInstances))
	mux.Handle("GET /api/v1/vm", apiv1.PermView, h(a.getInstances))
	mux.Handle("PUT /api/v1/vm", apiv1.PermStartInstances, h(a.updateInstance))
	mux.Handle("DELETE /api/v1/vm", apiv1.PermTerminateInstances, h(a.terminateInstance))
	mux.Handle("POST /api/v1/rpc/vm/restart", apiv1.PermStartInstances, h(a.restartInstance))

	mux.Handle("GET /api/v1/registry/vm", apiv1.PermView, h(a.registryTemplates))
	mux.Handle("DELETE /api/v1/registry/vm", apiv1.PermManageTemplates, h(a.registryDelete))
	mux.Handle("DELETE /api/v1/registry/revert", apiv1.PermManageTemplates, h(a.registryRevert))
	mux.Handle("GET /api/v1/registry/disk", apiv1.PermView, h(a.registryDisk))
	mux.Handle("POST /api/v1/registry/vm/distribute", apiv1.PermManageTemplates, h(a.distribute))
	mux.Handle("GET /api/v1/registry/vm/distribute", apiv1.PermView, h(a.distribution))
	mux.Handle("DELETE /api/v1/registry/vm/distribute", apiv1.PermManageTemplates, h(a.cancelDistribution))
	mux.Handle("DELETE /api/v1/registry/vm/remove", apiv1.PermManageTemplates, h(a.removeFromNodes))
	// Registry tokens: the route checks its callers itself (users, nodes).
	mux.Handle("GET /api/v1/registry/token", AccessRegistryToken, h(a.registryToken))

	mux.Handle("GET /api/v1/permission-group", apiv1.PermAdmin, h(a.listPermissionGroups))
	mux.Handle("POST /api/v1/permission-group", apiv1.PermAdmin, h(a.createPermissionGroup))
	mux.Handle("PUT /api/v1/permission-group", apiv1.PermAdmin, h(a.replacePermissionGroup))
	mux.Handle("DELETE /api/v1/permission-group", apiv1.PermAdmin, h(a.deletePermissionGroup))

	// The node agents' protocol, authenticated by the join token.
	mux.Handle("POST /api/v1/agent/join", AccessJoin, a.open.Wrap(a.joiner(h(a.agentJoin))))
	mux.Handle("POST /api/v1/agent/heartbeat", AccessNode, a.agent(h(a.agentHeartbeat)))
	mux.Handle("POST /api/v1/agent/leave", AccessNode, a.agent(h(a.agentLeave)))
	mux.Handle("POST /api/v1/agent/report", AccessNode, a.agent(h(a.agentReport)))
	mux.Handle("POST /api/v1/agent/status", AccessNode, a.agent(h(a.agentStatus)))
	mux.Handle("GET /api/v1/agent/assignments", AccessNode, a.agent(h(a.agentAssignments)))
	mux.Handle("POST /api/v1/agent/prefetch", AccessNode, a.agent(h(a.agentPrefetch)))
	mux.Handle("POST /api/v1/agent/image", AccessNode, a.agent(h(a.agentImage)))

	mux.Handle("POST /tap/v1/hand", AccessTap, a.open.Wrap(http.HandlerFunc(a.tapHand)))
	mux.Handle("POST /tap/v1/shake", AccessTap, a.open.Wrap(http.HandlerFunc(a.tapShake)))

	mux.Handle("POST /api/v1/join-token", apiv1.PermAdmin, h(a.rotateJoinToken))

	mux.HandleFunc("GET /api/v1/events", apiv1.PermView, a.events)
	mux.Handle("GET /api/v1/vm/logs", apiv1.PermView, h(a.instanceLogs))

	mux.Handle("POST /api/v1/image", apiv1.PermManageTemplates, h(a.saveImage))
	mux.Handle("GET /api/v1/image", apiv1.PermView, h(a.images))

	return rts
}

// routeList collects routes with the mux's method names.
type routeList struct{ rts *[]route }

func (l routeList) Handle(pattern, access string, h http.Handler) {
	*l.rts = append(*l.rts, route{pattern, access, h})
}

func (l routeList) HandleFunc(pattern, access string, h func(http.ResponseWriter, *http.Request)) {
	l.Handle(pattern, access, http.HandlerFunc(h))
}
