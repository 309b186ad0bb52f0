package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/corral-build/corral/internal/store"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"io"
	"log/slog"
	"net/http"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/controller"
)

// maxBody bounds request bodies; the largest legitimate one is a start request
// carrying a startup script.
const maxBody = 8 << 20

// handlerFunc returns the response body or an error for the envelope.
type handlerFunc func(r *http.Request) (any, error)

// okNoBody marks a success whose envelope has no body.
type okNoBody struct{}

// errBadBody marks a body that is not JSON at all (HTTP 400).
type errBadBody struct{ err error }

func (e errBadBody) Error() string { return e.err.Error() }

func (a *API) handle(fn handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := fn(r)
		if err != nil {
			code, msg := a.failure(r, err)
			writeJSON(w, code, apiv1.Envelope{Status: apiv1.StatusFAIL, Message: msg})
			return
		}
		env := apiv1.Envelope{Status: apiv1.StatusOK}
		if p, ok := body.(page); ok {
			w.Header().Set("X-Total-Count", fmt.Sprint(p.total))
			if p.truncated {
				w.Header().Set("X-Corral-Truncated", "true")
				env.Message = fmt.Sprintf("list truncated to %d of %d items: page it with ?limit=N&offset=M", p.count, p.total)
			}
			if p.encode != nil {
				// Streamed: the envelope around the items, in its field order.
				msg, _ := json.Marshal(env.Message)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusOK)
				_, _ = io.WriteString(w, `{"status":"OK","message":`+string(msg)+`,"body":`)
				if err := p.encode(w); err != nil {
					a.log.Warn("stream list", "path", r.URL.Path, "err", err)
					return
				}
				_, _ = io.WriteString(w, "}\n")
				return
			}
			body = p.items
		}
		if _, none := body.(okNoBody); !none {
			raw, err := json.Marshal(body)
			if err != nil {
				a.log.Error("encode response", "path", r.URL.Path, "err", err)
				writeJSON(w, http.StatusInternalServerError, apiv1.Envelope{Status: apiv1.StatusFAIL, Message: "internal error"})
				return
			}
			env.Body = raw
		}
		writeJSON(w, http.StatusOK, env)
	})
}

// noSpaceErrors counts requests etcd refused for want of space: an alarm
// to page on (corral_etcd_nospace_errors_total).
var noSpaceErrors = promauto.NewCounter(prometheus.CounterOpts{Name: "corral_etcd_nospace_errors_total",
	Help: "API requests refused because etcd is out of space (its NOSPACE alarm is raised)."})

// failure is the one table from domain errors to HTTP codes and the exact
// messages clients compare. Logical errors are HTTP 200 + FAIL.
func (a *API) failure(r *http.Request, err error) (int, string) {
	var field *apiv1.FieldError
	var noTag *controller.NoSuchTagError
	var badBody errBadBody
	var denied *controller.PermissionError
	var mismatch *controller.NodeMismatchError
	var limit *controller.LimitError
	var identity *controller.NodeIdentityError
	var bytesLimit *controller.BytesLimitError
	switch {
	case errors.As(err, &identity):
		return http.StatusForbidden, identity.Error()
	case errors.As(err, &limit):
		return http.StatusTooManyRequests, limit.Error()
	case errors.As(err, &bytesLimit):
		return http.StatusTooManyRequests, bytesLimit.Error()
	case errors.As(err, &denied):
		return http.StatusForbidden, denied.Error()
	case errors.As(err, &mismatch):
		return http.StatusForbidden, mismatch.Error()
	case errors.As(err, &badBody):
		return http.StatusBadRequest, badBody.Error()
	case errors.As(err, &field):
		return http.StatusOK, field.Error()
	case errors.As(err, &noTag):
		return http.StatusOK, noTag.Error()
	case errors.Is(err, errNoRoute):
		return http.StatusNotFound, apiv1.MsgNotFound
	case errors.Is(err, controller.ErrNotFound):
		return http.StatusOK, apiv1.MsgNotFound
	case errors.Is(err, controller.ErrNotInRegistry):
		return http.StatusOK, apiv1.MsgNotInRegistry
	case errors.Is(err, controller.ErrBadToken), errors.Is(err, controller.ErrAuth):
		return http.StatusUnauthorized, apiv1.MsgAuthRequired
	case errors.Is(err, controller.ErrDisjoined):
		return http.StatusGone, "node was disjoined"
	case errors.Is(err, controller.ErrRegistryTokensOff):
		return http.StatusNotFound, err.Error()
	case errors.Is(err, controller.ErrLeaseExpired):
		return http.StatusConflict, "node lease expired: join again"
	case store.IsUnavailable(err):
		// Not the request's fault: etcd was choosing a leader or lost a
		// member. A read can be sent again at once; a start only with an
		// Idempotency-Key (it may have been made).
		a.log.Warn("etcd did not answer in time", "method", r.Method, "path", r.URL.Path, "err", err)
		return http.StatusServiceUnavailable, "the cloud's etcd did not answer in time (a member or its leader changed): try again shortly" +
			" (a start with the same Idempotency-Key is never made twice)"
	case store.IsNoSpace(err):
		noSpaceErrors.Inc()
		a.log.Error("etcd is out of space (NOSPACE alarm): only reads, terminates and deletes work until it is compacted, defragmented and the alarm disarmed",
			"method", r.Method, "path", r.URL.Path)
		return http.StatusInsufficientStorage, "the cloud's etcd is out of space (its quota): lists and terminates work; " +
			"an operator must compact and defragment it and disarm the alarm (corral etcd defrag; etcdctl alarm disarm)"
	}
	if r.Context().Err() != nil {
		return 499, "request cancelled"
	}
	a.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	return http.StatusInternalServerError, "internal error: " + err.Error()
}

// decode parses the body as JSON whatever the Content-Type.
func decode(r *http.Request, v any) error {
	data, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return errBadBody{fmt.Errorf("read body: %w", err)}
	}
	if len(data) > maxBody {
		return errBadBody{fmt.Errorf("body: larger than %d bytes", maxBody)}
	}
	err = apiv1.Decode(data, v)
	var field *apiv1.FieldError
	if errors.As(err, &field) && field.Field == "body" {
		return errBadBody{err}
	}
	return err
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func recoverPanics(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				log.Error("handler panic", "method", r.Method, "path", r.URL.Path, "panic", v)
				writeJSON(w, http.StatusInternalServerError, apiv1.Envelope{Status: apiv1.StatusFAIL, Message: "internal error"})
			}
		}()
		next.ServeHTTP(w, r)
	})
}
