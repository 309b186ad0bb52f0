package httpapi

import (
	"crypto/x509"
	"encoding/json"
	"net"
	"net/http"
	"strings"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/httpserve"
)

// requireAuth checks, before the route runs, that its caller may call it:
// the permission its route declares (routes.go), or, for a path no route
// serves, any caller who may view (then 404). Routes that check their
// callers themselves (node, join, tap, registry-token) pass through.
func (a *API) requireAuth(mux *http.ServeMux, access map[string]string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, pattern := mux.Handler(r)
		perm, ok := access[pattern]
		switch {
		case !ok && !strings.HasPrefix(r.URL.Path, "/api/v1/"):
			mux.ServeHTTP(w, r) // not ours: 404
			return
		case !ok:
			perm = apiv1.PermView
		case perm == AccessNode || perm == AccessJoin || perm == AccessTap || perm == AccessRegistryToken:
			mux.ServeHTTP(w, r)
			return
		}
		id, err := a.authn(r)
		if err == nil {
			err = a.svc.Authorize(r.Context(), id, perm)
		}
		if err != nil {
			// The route a refused request was for (logs, metrics).
			r.Pattern = pattern
			httpserve.SetRoute(r.Context(), pattern)
			code, msg := a.failure(r, err)
			if code == http.StatusUnauthorized || code == http.StatusForbidden {
				a.svc.RecordAuthFailure(RemoteHost(r), r.Method, r.URL.Path, msg)
			}
			writeJSON(w, code, apiv1.Envelope{Status: apiv1.StatusFAIL, Message: msg})
			return
		}
		httpserve.SetCaller(r.Context(), id.String())
		r2 := r.WithContext(controller.WithCaller(r.Context(), id))
		mux.ServeHTTP(w, r2)
		r.Pattern = r2.Pattern // the metrics middleware labels by the matched route
	})
}

// tapHand answers raw text: the base64 secret encrypted to the key.
func (a *API) tapHand(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ID string `json:"id"`
	}
	if decode(r, &req) != nil || req.ID == "" {
		writeJSON(w, http.StatusUnauthorized, apiv1.Envelope{Status: apiv1.StatusFAIL, Message: apiv1.MsgAuthRequired})
		return
	}
	secret, err := a.svc.Hand(r.Context(), req.ID)
	if err != nil {
		code, msg := a.failure(r, err)
		writeJSON(w, code, apiv1.Envelope{Status: apiv1.StatusFAIL, Message: msg})
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Write([]byte(secret))
}

// tapShake answers {id, data}; clients send data back as a Bearer token.
func (a *API) tapShake(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ID     string `json:"id"`
		Secret string `json:"secret"`
	}
	if decode(r, &req) != nil {
		writeJSON(w, http.StatusUnauthorized, apiv1.Envelope{Status: apiv1.StatusFAIL, Message: apiv1.MsgAuthRequired})
		return
	}
	sess, err := a.svc.Shake(r.Context(), req.ID, req.Secret)
	if err != nil {
		code, msg := a.failure(r, err)
		writeJSON(w, code, apiv1.Envelope{Status: apiv1.StatusFAIL, Message: msg})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"id": req.ID, "data": sess})
}

// ClientCert is the client certificate the server verified against its
// client CA, or nil when the request carried none.
func ClientCert(r *http.Request) *x509.Certificate {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		return nil
	}
	return r.TLS.VerifiedChains[0][0]
}

// registryToken issues a registry token to a user or a node.
func (a *API) registryToken(r *http.Request) (any, error) {
	return a.svc.RegistryToken(r.Context(), r.Header.Get("Authorization"), ClientCert(r), r.URL.Query()["scope"])
}

// rotateJoinToken makes a new join token and answers it, once.
func (a *API) rotateJoinToken(r *http.Request) (any, error) {
	token, err := a.svc.RotateJoinToken(r.Context())
	return map[string]string{"join_token": token}, err
}

// RemoteHost is the client's address without its port.
func RemoteHost(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
