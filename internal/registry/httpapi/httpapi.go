// Package httpapi serves the registry on port 8089: the reference product's
// /registry endpoints and Corral's chunk transfer protocol. Every transfer
// request is bounded (one chunk, or one batch of digests), so load balancer
// idle limits and proxy body limits cannot kill a push.
package httpapi

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/registry"
	"github.com/corral-build/corral/internal/registry/chunk"
	"github.com/corral-build/corral/internal/registry/storage"
)

// MaxDigestsPerRequest bounds a missing-chunks query.
const MaxDigestsPerRequest = 8192

type api struct {
	reg *registry.Registry
	log *slog.Logger
	buf sync.Pool
}

// envelope is the reference registry's response shape.
type envelope struct {
	Status        string `json:"status"`
	Message       string `json:"message"`
	Body          any    `json:"body,omitempty"`
	Code          int    `json:"code,omitempty"`
	ExceptionType string `json:"exception_type,omitempty"`
}

// New returns the registry's HTTP handler, checking callers as auth says.
func New(reg *registry.Registry, log *slog.Logger, auth Auth) http.Handler {
	g := newGuard(auth)
	a := &api{reg: reg, log: log, buf: sync.Pool{New: func() any { b := make([]byte, 0, chunk.MaxEncoded); return &b }}}
	mux := http.NewServeMux()
	for _, rt := range a.routes(g) {
		mux.Handle(rt.pattern, rt.handler)
	}
	return g.wrap(mux)
}

type route struct {
	pattern string
	handler http.Handler
}

// Patterns lists every route the registry serves ("METHOD /path"; "/v2/"
// is the whole OCI API), for tests that must cover each one.
func Patterns() []string {
	var out []string
	for _, rt := range (&api{}).routes(&guard{}) {
		out = append(out, rt.pattern)
	}
	return out
}

func (a *api) routes(g *guard) []route {
	var rts []route
	add := func(p string, h http.Handler) { rts = append(rts, route{p, h}) }
	h := a.handle
	add("GET /registry/status", h(a.status))
	add("GET /livez", http.HandlerFunc(livez))
	add("GET /readyz", http.HandlerFunc(a.readyz))
	add("GET /registry/vm", h(a.templatesV1))
	add("GET /registry/v2/vm", h(a.templates))
	add("GET /registry/vm/arch", h(a.arch))
	add("PUT /registry/vm/arch", h(a.setArch))
	add("GET /registry/vm/info", h(a.vmInfo))
	add("DELETE /registry/vm", h(a.delete))
	add("DELETE /registry/revert", h(a.revert))
	add("GET /registry/disk", h(a.disk))

	add("POST /registry/corral/v1/uploads", h(a.startUpload))
	add("DELETE /registry/corral/v1/uploads/{id}", h(a.endUpload))
	add("POST /registry/corral/v1/chunks/missing", h(a.missing))
	add("PUT /registry/corral/v1/chunks/{digest}", h(a.putChunk))
	add("POST /registry/corral/v1/packs", h(a.putPack))
	add("POST /registry/corral/v1/chunks/fetch", http.HandlerFunc(a.fetch))
	add("POST /registry/corral/v1/chunks/signatures", http.HandlerFunc(a.signatures))
	add("GET /registry/corral/v1/chunks/{digest}", http.HandlerFunc(a.getChunk))
	add("POST /registry/corral/v1/commit", h(a.commit))
	add("GET /registry/corral/v1/manifest", h(a.manifest))
	add("/registry/", h(func(*http.Request) (any, error) { return nil, registry.ErrNotFound }))
	add("GET /v2/token", http.HandlerFunc(g.token))
	add("POST /v2/token", http.HandlerFunc(g.token))
	add("/v2/", http.HandlerFunc(a.oci))
	return rts
}

type handlerFunc func(r *http.Request) (any, error)

type noBody struct{}

func (a *api) handle(fn handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := fn(r)
		if err != nil {
			code, env := a.failure(r, err)
			writeJSON(w, code, env)
			return
		}
		env := envelope{Status: "OK"}
		if _, none := body.(noBody); !none {
			env.Body = body
		}
		writeJSON(w, http.StatusOK, env)
	})
}

// failure maps registry errors to FAIL envelopes. Unknown templates and tags
// answer HTTP 200 FAIL like the rest of the API; protocol misuse is a 4xx.
func (a *api) failure(r *http.Request, err error) (int, envelope) {
	var invalid *registry.InvalidError
	var missing *registry.MissingChunksError
	switch {
	case errors.As(err, &invalid):
		return http.StatusBadRequest, envelope{Status: "FAIL", Message: invalid.Error(), Code: 400, ExceptionType: "InvalidInput"}
	case errors.As(err, &missing):
		return http.StatusConflict, envelope{Status: "FAIL", Message: missing.Error(), Code: 409,
			ExceptionType: "MissingChunks", Body: apiv1.MissingResponse{Missing: missing.Digests}}
	case errors.Is(err, registry.ErrTagExists):
		return http.StatusConflict, envelope{Status: "FAIL", Message: err.Error(), Code: 409, ExceptionType: "TagExists"}
	case errors.Is(err, registry.ErrTagNotFound):
		return http.StatusOK, envelope{Status: "FAIL", Message: apiv1.MsgNoSuchTag(r.URL.Query().Get("tag")), Code: 404, ExceptionType: "NotFound"}
	case errors.Is(err, registry.ErrNotFound):
		return http.StatusOK, envelope{Status: "FAIL", Message: apiv1.MsgNotFound, Code: 404, ExceptionType: "NotFound"}
	case registry.IsNoSpace(err):
		msg := a.noSpace(r, err)
		return http.StatusInsufficientStorage, envelope{Status: "FAIL", Message: msg, Code: 507, ExceptionType: "InsufficientStorage"}
	}
	a.log.Error("registry request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	// The log has the error; the caller gets no server paths.
	return http.StatusInternalServerError, envelope{Status: "FAIL", Message: "internal error (the registry's log says more)", Code: 500, ExceptionType: "Internal"}
}

// noSpace answers a write that found the store full: what is free, never
// where; and garbage collection starts at once.
func (a *api) noSpace(r *http.Request, err error) string {
	free := a.reg.NoSpace(r.Context())
	a.log.Warn("registry store is full: the write was refused and garbage collection starts now", "method", r.Method, "path", r.URL.Path, "free_bytes", free, "err", err)
	if free < 0 {
		return "registry storage is full: nothing was stored; delete templates or grow the registry's volume, then push again"
	}
	return fmt.Sprintf("registry storage is full (%d bytes free): nothing was stored; delete templates or grow the registry's volume, then push again", free)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func decode(r *http.Request, limit int64, v any) error {
	data, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return &registry.InvalidError{Field: "body", Reason: err.Error()}
	}
	if int64(len(data)) > limit {
		return &registry.InvalidError{Field: "body", Reason: fmt.Sprintf("larger than %d bytes", limit)}
	}
	if err := apiv1.Decode(data, v); err != nil {
		return &registry.InvalidError{Field: "body", Reason: err.Error()}
	}
	return nil
}

// livez answers while the process serves (Kubernetes liveness, compose
// health checks); no credentials needed.
func livez(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "ok\n")
}

// readyz answers 200 while the store answers, 503 otherwise (readiness).
func (a *api) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if _, err := a.reg.Backend().Stat(ctx, "templates"); err != nil && !errors.Is(err, storage.ErrNotFound) {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "storage: "+err.Error()+"\n")
		return
	}
	_, _ = io.WriteString(w, "ok\n")
}

func (a *api) status(*http.Request) (any, error) {
	return apiv1.RegistryStatus{Status: "Running", Version: apiv1.Version}, nil
}

// templatesV1 is GET /registry/vm: the reference's v1 list, one {id: name}
// object per template (the v2 list of objects is /registry/v2/vm); with
// ?id=, the template itself.
func (a *api) templatesV1(r *http.Request) (any, error) {
	if r.URL.Query().Get("id") != "" {
		return a.templates(r)
	}
	list, err := a.reg.ListTemplates(r.Context())
	out := []map[string]string{}
	for _, t := range list {
		out = append(out, map[string]string{t.ID: t.Name})
	}
	return out, err
}

func (a *api) templates(r *http.Request) (any, error) {
	if id := r.URL.Query().Get("id"); id != "" {
		return a.reg.GetTemplate(r.Context(), id)
	}
	return a.reg.ListTemplates(r.Context())
}

func (a *api) vmInfo(r *http.Request) (any, error) {
	id := r.URL.Query().Get("id")
	if id == "" {
		return nil, &registry.InvalidError{Field: "id", Reason: "required as ?id="}
	}
	return a.reg.VMInfo(r.Context(), id, r.URL.Query().Get("tag"))
}

// setArch is PUT /registry/vm/arch?id=<template> with ?arch= or a body
// {"arch"}.
func (a *api) setArch(r *http.Request) (any, error) {
	id := r.URL.Query().Get("id")
	if id == "" {
		return nil, &registry.InvalidError{Field: "id", Reason: "required as ?id="}
	}
	var body struct {
		Arch string `json:"arch"`
	}
	if r.ContentLength != 0 {
		data, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		if err != nil {
			return nil, &registry.InvalidError{Field: "body", Reason: err.Error()}
		}
		if err := apiv1.Decode(data, &body); err != nil {
			return nil, &registry.InvalidError{Field: "body", Reason: err.Error()}
		}
	}
	return json.RawMessage("null"), a.reg.SetArch(r.Context(), id, cmp.Or(r.URL.Query().Get("arch"), body.Arch)) // body: null, as the reference
}

func (a *api) arch(r *http.Request) (any, error) {
	if id := r.URL.Query().Get("id"); id != "" {
		t, err := a.reg.GetTemplate(r.Context(), id)
		return t.Arch, err
	}
	list, err := a.reg.ListTemplates(r.Context())
	out := map[string]string{}
	for _, t := range list {
		out[t.ID] = t.Arch
	}
	return out, err
}

func (a *api) delete(r *http.Request) (any, error) {
	q := r.URL.Query()
	if q.Get("id") == "" {
		return nil, &registry.InvalidError{Field: "id", Reason: "required as ?id="}
	}
	if q.Get("tag") != "" {
		return noBody{}, a.reg.DeleteTag(r.Context(), q.Get("id"), q.Get("tag"))
	}
	return noBody{}, a.reg.DeleteTemplate(r.Context(), q.Get("id"))
}

// revert drops the latest tag, or every tag after ?tag= / ?number= (or a
// body {"tag"} / {"number"}).
func (a *api) revert(r *http.Request) (any, error) {
	q := r.URL.Query()
	id := q.Get("id")
	if id == "" {
		return nil, &registry.InvalidError{Field: "id", Reason: "required as ?id="}
	}
	tag, number, err := revertTarget(r)
	if err != nil {
		return nil, err
	}
	return noBody{}, a.reg.RevertTo(r.Context(), id, tag, number)
}

// revertTarget reads the tag to revert to: ?tag=, ?number=, or a body.
func revertTarget(r *http.Request) (string, int, error) {
	var body apiv1.RevertRequest
	if r.ContentLength != 0 {
		data, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		if err != nil {
			return "", 0, &registry.InvalidError{Field: "body", Reason: err.Error()}
		}
		if err := apiv1.Decode(data, &body); err != nil {
			return "", 0, asInvalid(err)
		}
	}
	tag, number, err := body.Target(r.URL.Query())
	return tag, number, asInvalid(err)
}

// asInvalid turns an API field error into the registry's own.
func asInvalid(err error) error {
	var fe *apiv1.FieldError
	if errors.As(err, &fe) {
		return &registry.InvalidError{Field: fe.Field, Reason: fe.Reason}
	}
	return err
}

func (a *api) disk(r *http.Request) (any, error) {
	total, free, err := a.reg.Backend().Usage(r.Context())
	return apiv1.Disk{Total: total, Free: free}, err
}

func (a *api) startUpload(r *http.Request) (any, error) {
	id := apiv1.NewID()
	started, err := a.reg.StartUpload(r.Context(), id)
	return apiv1.Upload{ID: id, Started: started}, err
}

func (a *api) endUpload(r *http.Request) (any, error) {
	return noBody{}, a.reg.EndUpload(r.Context(), r.PathValue("id"))
}

func (a *api) missing(r *http.Request) (any, error) {
	var req apiv1.MissingRequest
	if err := decode(r, MaxDigestsPerRequest*80, &req); err != nil {
		return nil, err
	}
	if len(req.Digests) > MaxDigestsPerRequest {
		return nil, &registry.InvalidError{Field: "digests", Reason: fmt.Sprintf("at most %d per request", MaxDigestsPerRequest)}
	}
	a.reg.TouchUpload(r.Context(), req.UploadID)
	missing, err := a.reg.Missing(r.Context(), req.Digests)
	if missing == nil {
		missing = []string{}
	}
	return apiv1.MissingResponse{Missing: missing}, err
}

func (a *api) putChunk(r *http.Request) (any, error) {
	if r.ContentLength > chunk.MaxEncoded {
		return nil, &registry.InvalidError{Field: "chunk", Reason: fmt.Sprintf("%d bytes, more than the %d-byte limit", r.ContentLength, chunk.MaxEncoded)}
	}
	bufp := a.buf.Get().(*[]byte)
	defer a.buf.Put(bufp)
	scratch := a.buf.Get().(*[]byte)
	defer a.buf.Put(scratch)
	data, err := readLimited(r.Body, (*bufp)[:0], chunk.MaxEncoded)
	if err != nil {
		return nil, err
	}
	a.reg.TouchUpload(r.Context(), r.URL.Query().Get("upload"))
	return noBody{}, a.reg.PutChunk(r.Context(), r.PathValue("digest"), data, (*scratch)[:0])
}

// putPack stores a stream of chunk frames (up to registry.MaxPackRequest
// bytes) as one pack.
func (a *api) putPack(r *http.Request) (any, error) {
	if r.ContentLength > registry.MaxPackRequest {
		return nil, &registry.InvalidError{Field: "body", Reason: fmt.Sprintf("%d bytes, more than the %d-byte limit", r.ContentLength, registry.MaxPackRequest)}
	}
	a.reg.TouchUpload(r.Context(), r.URL.Query().Get("upload"))
	body := &limitedBody{r: r.Body, left: registry.MaxPackRequest}
	s, err := a.reg.PutChunks(r.Context(), body)
	if body.over {
		return nil, &registry.InvalidError{Field: "body", Reason: fmt.Sprintf("more than the %d-byte limit", registry.MaxPackRequest)}
	}
	return apiv1.PackResponse{Chunks: s.Chunks, Stored: s.Stored, StoredBytes: s.Encoded, Resend: s.Resend}, err
}

// limitedBody fails a read past its limit (and remembers that it did).
type limitedBody struct {
	r    io.Reader
	left int64
	over bool
}

func (l *limitedBody) Read(p []byte) (int, error) {
	if l.left <= 0 {
		var one [1]byte
		if n, _ := l.r.Read(one[:]); n > 0 {
			l.over = true
			return 0, errors.New("request body over its limit")
		}
		return 0, io.EOF
	}
	n, err := l.r.Read(p[:min(int64(len(p)), l.left)])
	l.left -= int64(n)
	return n, err
}

// fetch streams the chunks a body {"digests"} names as frames (at most
// registry.MaxFetchChunks): every digest is checked before the first byte.
func (a *api) fetch(w http.ResponseWriter, r *http.Request) {
	var req apiv1.FetchRequest
	err := decode(r, registry.MaxFetchChunks*80+1024, &req)
	var plan *registry.FetchPlan
	if err == nil {
		plan, err = a.reg.PlanFetch(r.Context(), req.Digests)
	}
	if err != nil {
		code, env := a.failure(r, err)
		if errors.Is(err, registry.ErrNotFound) {
			code, env.Message = http.StatusNotFound, err.Error()
		}
		writeJSON(w, code, env)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if err := a.reg.Stream(r.Context(), plan, w); err != nil && r.Context().Err() == nil {
		// Headers are out: cut the stream so the client sees it short and
		// asks again for what it did not get.
		a.log.Warn("chunk stream broken", "err", err)
		panic(http.ErrAbortHandler)
	}
}

// signatures answers {"digests"} (at most registry.MaxFetchChunks) with the
// block signature of each stored one, binary: digest (32 bytes), uint32
// block count, then a uint32 CRC-32C per block (little endian).
func (a *api) signatures(w http.ResponseWriter, r *http.Request) {
	var req apiv1.FetchRequest
	err := decode(r, registry.MaxFetchChunks*80+1024, &req)
	var sigs map[string][]uint32
	if err == nil {
		sigs, err = a.reg.Signatures(r.Context(), req.Digests)
	}
	if err != nil {
		code, env := a.failure(r, err)
		writeJSON(w, code, env)
		return
	}
	var out []byte
	for _, d := range req.Digests {
		sig, ok := sigs[d]
		if !ok {
			continue
		}
		raw, _ := hex.DecodeString(d)
		out = append(out, raw...)
		out = binary.LittleEndian.AppendUint32(out, uint32(len(sig)))
		for _, c := range sig {
			out = binary.LittleEndian.AppendUint32(out, c)
		}
		delete(sigs, d)
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	_, _ = w.Write(out)
}

func readLimited(r io.Reader, buf []byte, limit int) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			if len(buf) >= limit {
				var one [1]byte
				if n, _ := r.Read(one[:]); n > 0 {
					return nil, &registry.InvalidError{Field: "chunk", Reason: fmt.Sprintf("more than the %d-byte limit", limit)}
				}
				return buf, nil
			}
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return nil, &registry.InvalidError{Field: "chunk", Reason: "reading body: " + err.Error()}
		}
	}
}

// getChunk streams an encoded chunk, honouring "Range: bytes=N-" so an
// interrupted download resumes where it stopped.
func (a *api) getChunk(w http.ResponseWriter, r *http.Request) {
	var offset int64
	if rg := r.Header.Get("Range"); rg != "" {
		spec, ok := strings.CutPrefix(rg, "bytes=")
		start, _, _ := strings.Cut(spec, "-")
		n, err := strconv.ParseInt(start, 10, 64)
		if !ok || err != nil || n < 0 {
			code, env := a.failure(r, &registry.InvalidError{Field: "Range", Reason: "want bytes=N-"})
			writeJSON(w, code, env)
			return
		}
		offset = n
	}
	rc, size, err := a.reg.OpenChunk(r.Context(), r.PathValue("digest"), offset)
	if err != nil {
		code, env := a.failure(r, err)
		if errors.Is(err, registry.ErrNotFound) {
			code = http.StatusNotFound
		}
		writeJSON(w, code, env)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Accept-Ranges", "bytes")
	w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	if offset > 0 {
		if offset >= size {
			w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
			return
		}
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", offset, size-1, size))
		w.Header().Set("Content-Length", strconv.FormatInt(size-offset, 10))
		w.WriteHeader(http.StatusPartialContent)
	} else {
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	}
	_, _ = io.Copy(w, rc)
}

// MaxCommitBytes bounds a commit request: a manifest of a 1 TiB disk of
// non-zero data is ~70 MB of digests (zero chunks cost 3 bytes each).
const MaxCommitBytes = 96 << 20

// commitSlots bounds how many commits decode at once: each holds its body
// and the decoded manifest in memory.
var commitSlots = make(chan struct{}, 2)

func (a *api) commit(r *http.Request) (any, error) {
	select {
	case commitSlots <- struct{}{}:
		defer func() { <-commitSlots }()
	case <-r.Context().Done():
		return nil, r.Context().Err()
	}
	var req apiv1.CommitRequest
	if err := decode(r, MaxCommitBytes, &req); err != nil {
		return nil, err
	}
	return a.reg.Commit(r.Context(), req)
}

func (a *api) manifest(r *http.Request) (any, error) {
	q := r.URL.Query()
	if q.Get("id") == "" {
		return nil, &registry.InvalidError{Field: "id", Reason: "required as ?id="}
	}
	if q.Get("purpose") == "delta-base" { // a push reading the tag it builds on: not a pull
		return a.reg.DeltaBase(r.Context(), q.Get("id"))
	}
	return a.reg.TagManifest(r.Context(), q.Get("id"), q.Get("tag"))
}
