package httpapi

import (
	"context"
	"net/http"
	"strconv"
	"strings"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/httpserve"
)

// agent requires the join token as a bearer token.
// joiner admits the join token: it only joins.
func (a *API) joiner(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if err := a.svc.AuthorizeNode(r.Context(), token); err != nil {
			code, msg := a.failure(r, err)
			writeJSON(w, code, apiv1.Envelope{Status: apiv1.StatusFAIL, Message: msg})
			return
		}
		next.ServeHTTP(w, r)
	})
}

type nodeKey struct{}

// agent admits a node's own credential and remembers which node it is;
// the handlers then refuse calls about any other node.
func (a *API) agent(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		id, err := a.svc.AuthenticateNode(r.Context(), token)
		if err != nil {
			// 401 for a wrong credential, 410 for a disjoined node's own,
			// 5xx when etcd could not say: a node must not take an outage
			// for a refused credential.
			code, msg := a.failure(r, err)
			writeJSON(w, code, apiv1.Envelope{Status: apiv1.StatusFAIL, Message: msg})
			return
		}
		httpserve.SetCaller(r.Context(), "node:"+id)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), nodeKey{}, id)))
	})
}

// self checks that a node's call is about itself.
func self(r *http.Request, target string) error {
	if caller, _ := r.Context().Value(nodeKey{}).(string); caller != target {
		return &controller.NodeMismatchError{Caller: caller, Target: target}
	}
	return nil
}

func (a *API) agentJoin(r *http.Request) (any, error) {
	var req apiv1.JoinRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	return a.svc.Join(r.Context(), req)
}

func (a *API) agentHeartbeat(r *http.Request) (any, error) {
	var req apiv1.HeartbeatRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if err := self(r, req.NodeID); err != nil {
		return nil, err
	}
	return okNoBody{}, a.svc.Heartbeat(r.Context(), req)
}

func (a *API) agentLeave(r *http.Request) (any, error) {
	var req apiv1.HeartbeatRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if err := self(r, req.NodeID); err != nil {
		return nil, err
	}
	return okNoBody{}, a.svc.Leave(r.Context(), req)
}

func (a *API) agentReport(r *http.Request) (any, error) {
	var req apiv1.NodeReport
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if err := self(r, req.NodeID); err != nil {
		return nil, err
	}
	return okNoBody{}, a.svc.UpdateReport(r.Context(), req)
}

func (a *API) agentStatus(r *http.Request) (any, error) {
	var req apiv1.StatusReport
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if err := self(r, req.NodeID); err != nil {
		return nil, err
	}
	return okNoBody{}, a.svc.ReportStatus(r.Context(), req)
}

func (a *API) agentAssignments(r *http.Request) (any, error) {
	q := r.URL.Query()
	since, err := strconv.ParseInt(q.Get("since"), 10, 64)
	if q.Get("since") != "" && err != nil {
		return nil, &apiv1.FieldError{Field: "since", Reason: "must be an integer revision"}
	}
	if q.Get("node_id") == "" {
		return nil, &apiv1.FieldError{Field: "node_id", Reason: "required"}
	}
	if err := self(r, q.Get("node_id")); err != nil {
		return nil, err
	}
	return a.svc.WaitAssignments(r.Context(), q.Get("node_id"), since)
}

func (a *API) agentPrefetch(r *http.Request) (any, error) {
	var req apiv1.PrefetchResult
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if err := self(r, req.NodeID); err != nil {
		return nil, err
	}
	return okNoBody{}, a.svc.FinishPrefetch(r.Context(), req)
}

func (a *API) agentImage(r *http.Request) (any, error) {
	var req apiv1.ImageResult
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if err := self(r, req.NodeID); err != nil {
		return nil, err
	}
	return okNoBody{}, a.svc.FinishImage(r.Context(), req)
}
