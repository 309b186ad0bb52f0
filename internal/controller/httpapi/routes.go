// Package httpapi serves the controller's /api/v1 (the reference product's
// REST contract) and the node agents' protocol. Handlers decode, call the
// controller service and encode; errors map to FAIL messages in one table.
package httpapi

import (
	"github.com/corral-build/corral/internal/httpserve"
	"log/slog"
	"net/http"

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
	for _, rt := range a.routes() {
		mux.Handle(rt.pattern, rt.handler)
	}
	mux.Handle("/api/v1/", a.handle(a.notFound))
	return recoverPanics(log, a.requireAuth(mux))
}

type route struct {
	pattern string
	handler http.Handler
}

// Patterns lists every route the controller serves ("METHOD /path"), for
// tests that must cover each one (the auth matrix).
func Patterns() []string {
	var out []string
	for _, rt := range (&API{}).routes() {
		out = append(out, rt.pattern)
	}
	return out
}

// routes is the controller's route table.
func (a *API) routes() []route {
	var rts []route
	h := a.handle
	mux := routeList{&rts}

	mux.Handle("GET /api/v1/status", h(a.status))

	mux.Handle("GET /api/v1/node", h(a.listNodes))
	mux.Handle("DELETE /api/v1/node", h(a.disjoinNode))
	mux.Handle("PUT /api/v1/node/config", h(a.configureNode))
	mux.Handle("POST /api/v1/node/config", h(a.configureNode))
	mux.Handle("POST /api/v1/node/group/{group_id}", h(a.addNodesToGroup))
	mux.Handle("DELETE /api/v1/node/group/{group_id}", h(a.removeNodesFromGroup))
	mux.Handle("POST /api/v1/node/group", h(a.addNodesToGroups))
	mux.Handle("DELETE /api/v1/node/group", h(a.removeNodesFromGroups))

	mux.Handle("GET /api/v1/usb", h(a.usb))
	mux.Handle("GET /api/v1/vlan", h(a.vlan))
	mux.Handle("GET /api/v1/group", h(a.listGroups))
	mux.Handle("POST /api/v1/group", h(a.createGroup))
	mux.Handle("PUT /api/v1/group", h(a.updateGroup))
	mux.Handle("DELETE /api/v1/group", h(a.deleteGroup))

	mux.Handle("POST /api/v1/vm", h(a.startInstances))
	mux.Handle("GET /api/v1/vm", h(a.getInstances))
	mux.Handle("PUT /api/v1/vm", h(a.updateInstance))
	mux.Handle("DELETE /api/v1/vm", h(a.terminateInstance))
	mux.Handle("POST /api/v1/rpc/vm/restart", h(a.restartInstance))

	mux.Handle("GET /api/v1/registry/vm", h(a.registryTemplates))
	mux.Handle("DELETE /api/v1/registry/vm", h(a.registryDelete))
	mux.Handle("DELETE /api/v1/registry/revert", h(a.registryRevert))
	mux.Handle("GET /api/v1/registry/disk", h(a.registryDisk))
	mux.Handle("POST /api/v1/registry/vm/distribute", h(a.distribute))
	mux.Handle("GET /api/v1/registry/vm/distribute", h(a.distribution))
	mux.Handle("DELETE /api/v1/registry/vm/distribute", h(a.cancelDistribution))
	mux.Handle("DELETE /api/v1/registry/vm/remove", h(a.removeFromNodes))
	// Registry tokens: the route checks its callers itself (users, nodes).
	mux.Handle("GET /api/v1/registry/token", h(a.registryToken))

	mux.Handle("GET /api/v1/permission-group", h(a.listPermissionGroups))
	mux.Handle("POST /api/v1/permission-group", h(a.createPermissionGroup))
	mux.Handle("PUT /api/v1/permission-group", h(a.replacePermissionGroup))
	mux.Handle("DELETE /api/v1/permission-group", h(a.deletePermissionGroup))

	// The node agents' protocol, authenticated by the join token.
	mux.Handle("POST /api/v1/agent/join", a.open.Wrap(a.joiner(h(a.agentJoin))))
	mux.Handle("POST /api/v1/agent/heartbeat", a.agent(h(a.agentHeartbeat)))
	mux.Handle("POST /api/v1/agent/leave", a.agent(h(a.agentLeave)))
	mux.Handle("POST /api/v1/agent/report", a.agent(h(a.agentReport)))
	mux.Handle("POST /api/v1/agent/status", a.agent(h(a.agentStatus)))
	mux.Handle("GET /api/v1/agent/assignments", a.agent(h(a.agentAssignments)))
	mux.Handle("POST /api/v1/agent/prefetch", a.agent(h(a.agentPrefetch)))
	mux.Handle("POST /api/v1/agent/image", a.agent(h(a.agentImage)))

	mux.Handle("POST /tap/v1/hand", a.open.Wrap(http.HandlerFunc(a.tapHand)))
	mux.Handle("POST /tap/v1/shake", a.open.Wrap(http.HandlerFunc(a.tapShake)))

	mux.Handle("POST /api/v1/join-token", h(a.rotateJoinToken))

	mux.HandleFunc("GET /api/v1/events", a.events)
	mux.Handle("GET /api/v1/vm/logs", h(a.instanceLogs))

	mux.Handle("POST /api/v1/image", h(a.saveImage))
	mux.Handle("GET /api/v1/image", h(a.images))

	return rts
}

// routeList collects routes with the mux's method names.
type routeList struct{ rts *[]route }

func (l routeList) Handle(pattern string, h http.Handler) {
	*l.rts = append(*l.rts, route{pattern, h})
}

func (l routeList) HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request)) {
	l.Handle(pattern, http.HandlerFunc(h))
}
