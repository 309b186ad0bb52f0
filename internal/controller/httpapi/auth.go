package httpapi

import (
	"encoding/json"
	"net/http"
	"strings"

	apiv1 "github.com/corral-build/corral/api/v1"
)

// requireAuth guards /api/v1 when authentication is on. The node agents'
// protocol has its own token, and /tap/v1 is how API keys log in.
func (a *API) requireAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		guarded := strings.HasPrefix(r.URL.Path, "/api/v1/") && !strings.HasPrefix(r.URL.Path, "/api/v1/agent/")
		if guarded && a.svc.Authenticate(r.Context(), r.Header.Get("Authorization"), CertUser(r)) != nil {
			writeJSON(w, http.StatusUnauthorized, apiv1.Envelope{Status: apiv1.StatusFAIL, Message: apiv1.MsgAuthRequired})
			return
		}
		next.ServeHTTP(w, r)
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

// CertUser is the common name of the client certificate the server verified
// against its client CA, or "" when the request carried none.
func CertUser(r *http.Request) string {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		return ""
	}
	cn := r.TLS.VerifiedChains[0][0].Subject.CommonName
	if cn == "" {
		cn = "client-certificate"
	}
	return cn
}
