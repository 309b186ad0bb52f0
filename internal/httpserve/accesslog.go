package httpserve

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// RequestIDHeader carries a request's id: the client's own when it sent a
// usable one (a proxy's, a CI job's), else one made here. Every answer
// carries it, so a user's report can be matched to the server's log line.
const RequestIDHeader = "X-Request-Id"

type accessKey struct{}

// access is what handlers below the log add to a request's line.
type access struct {
	caller string
	route  string
}

// SetCaller names the request's authenticated caller for its log line
// ("root", "key:<id>", "node:<id>", a certificate's name): never a secret.
func SetCaller(ctx context.Context, who string) {
	if a, ok := ctx.Value(accessKey{}).(*access); ok {
		a.caller = who
	}
}

// SetRoute names the request's route where a handler knows it better than
// the ServeMux that matched it (a pattern of a nested mux).
func SetRoute(ctx context.Context, route string) {
	if a, ok := ctx.Value(accessKey{}).(*access); ok {
		a.route = route
	}
}

// AccessLog gives every request an id (the X-Request-Id header, both ways)
// and, when log is not nil, logs one line per request at info once it is
// answered: method, route pattern (never the path's ids or the query),
// status, bytes, duration, caller and the client's address. Bodies and
// credentials are never logged. next should be a ServeMux: the route is
// the pattern it matched, or SetRoute's.
func AccessLog(log *slog.Logger, server string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(RequestIDHeader)
		if !validRequestID(id) {
			id = newRequestID()
			r.Header.Set(RequestIDHeader, id)
		}
		w.Header().Set(RequestIDHeader, id)
		if log == nil {
			next.ServeHTTP(w, r)
			return
		}
		start := time.Now()
		a := &access{}
		r = r.WithContext(context.WithValue(r.Context(), accessKey{}, a))
		rec := NewRecorder(w)
		answered := false
		defer func() { // also when next panics (net/http recovers it after)
			route := a.route
			if route == "" {
				route = r.Pattern
			}
			if route == "" {
				route = "unmatched"
			}
			status := rec.code
			switch {
			case !answered && status == 0:
				status = http.StatusInternalServerError // it panicked: the connection is dropped
			case status == 0:
				status = http.StatusOK
			}
			host, _, err := net.SplitHostPort(r.RemoteAddr)
			if err != nil {
				host = r.RemoteAddr
			}
			log.LogAttrs(r.Context(), slog.LevelInfo, "request", slog.String("server", server),
				slog.String("method", r.Method), slog.String("route", route), slog.Int("status", status),
				slog.Int64("bytes", rec.bytes), slog.Duration("duration", time.Since(start)),
				slog.String("caller", a.caller), slog.String("remote", host), slog.String("request_id", id))
		}()
		next.ServeHTTP(rec, r)
		answered = true
	})
}

// validRequestID accepts a client's id when it is short and plain (it is
// logged and echoed as is).
func validRequestID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.', c == ':':
		default:
			return false
		}
	}
	return true
}

func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Recorder notes the status and size of an answer, keeping the writer's
// optional interfaces (sendfile, flushes, the connection) reachable (the
// access log, the metrics).
type Recorder struct {
	http.ResponseWriter
	code  int
	bytes int64
}

// NewRecorder records what w answers.
func NewRecorder(w http.ResponseWriter) *Recorder { return &Recorder{ResponseWriter: w} }

// Status is the answer's status so far (200 when nothing set one).
func (r *Recorder) Status() int {
	if r.code == 0 {
		return http.StatusOK
	}
	return r.code
}

func (r *Recorder) WriteHeader(code int) {
	if r.code == 0 && code >= 200 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *Recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

func (r *Recorder) ReadFrom(src io.Reader) (int64, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := r.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(src)
	} else {
		n, err = io.Copy(struct{ io.Writer }{r.ResponseWriter}, src)
	}
	r.bytes += n
	return n, err
}

func (r *Recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *Recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
