package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/retry"
)

// Registry is a client of a Corral registry (or of the controller's
// /api/v1/registry proxy for the reference endpoints).
type Registry struct {
	base string
	http *http.Client
	// Retry is how failed requests are retried; every attempt is bounded by
	// its PerAttempt deadline. Default: retry.Default.
	Retry retry.Policy
	auth  func(ctx context.Context) (string, error)
}

// UseAuth sets where the client's Authorization header comes from (a
// registry token source, say); it is asked before every request.
func (r *Registry) UseAuth(header func(ctx context.Context) (string, error)) { r.auth = header }

// UseRootToken authenticates as root (HTTP Basic, user root).
func (r *Registry) UseRootToken(token string) {
	h := "Basic " + base64.StdEncoding.EncodeToString([]byte("root:"+token))
	r.UseAuth(func(context.Context) (string, error) { return h, nil })
}

// do sends one request with the client's credentials.
func (r *Registry) do(req *http.Request) (*http.Response, error) {
	if r.auth != nil {
		h, err := r.auth(req.Context())
		if err != nil {
			return nil, fmt.Errorf("registry credentials: %w", err)
		}
		if h != "" {
			req.Header.Set("Authorization", h)
		}
	}
	return r.http.Do(req)
}

// NewRegistry returns a client for the registry at base (http://host:8089).
func NewRegistry(base string) (*Registry, error) {
	u, err := url.Parse(base)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return nil, fmt.Errorf("registry URL %q: want http(s)://host:port", base)
	}
	t := newTransport(64)
	// Chunk bodies are MiBs: write and read them in large pieces.
	t.WriteBufferSize, t.ReadBufferSize = 256<<10, 256<<10
	return &Registry{base: strings.TrimRight(base, "/"), http: &http.Client{Transport: t}, Retry: retry.Default}, nil
}

// UseTLS sets how the client trusts the registry.
func (r *Registry) UseTLS(cfg *tls.Config) {
	if cfg != nil {
		r.http.Transport.(*http.Transport).TLSClientConfig = cfg
	}
}

// URL is the registry's base URL.
func (r *Registry) URL() string { return r.base }

// withRetry runs fn under the client's retry policy: a FAIL answer other
// than 5xx or 429 is final, and so is 507 (the registry is full: a retry
// would only fill it again); network errors and attempt deadlines are
// retried.
func (r *Registry) withRetry(ctx context.Context, what string, fn func(ctx context.Context) error) error {
	err := r.Retry.Do(ctx, func(ctx context.Context) error {
		err := fn(ctx)
		var fe *FailError
		if errors.As(err, &fe) && (fe.HTTPStatus < 500 && fe.HTTPStatus != http.StatusTooManyRequests || fe.HTTPStatus == http.StatusInsufficientStorage) {
			return retry.Permanent(err)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// call does one JSON request against the registry envelope.
func (r *Registry) call(ctx context.Context, method, path string, in, out any) error {
	return r.withRetry(ctx, method+" "+path, func(ctx context.Context) error {
		var body io.Reader
		if in != nil {
			data, err := json.Marshal(in)
			if err != nil {
				return err
			}
			body = bytes.NewReader(data)
		}
		req, err := http.NewRequestWithContext(ctx, method, r.base+path, body)
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := r.do(req)
		if err != nil {
			return err
		}
		return decodeRegistryEnvelope(resp, out, method+" "+path)
	})
}

// postForBytes POSTs in as JSON to a route that answers binary
// (application/octet-stream); any other answer is its FAIL as an error, and
// the catch-all FAIL of a registry without the route is errOldRegistry
// (permanent). The caller closes the body.
func (r *Registry) postForBytes(ctx context.Context, path string, in any) (*http.Response, error) {
	body, err := json.Marshal(in)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.base+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusOK && resp.Header.Get("Content-Type") == "application/octet-stream" {
		return resp, nil
	}
	err = decodeRegistryEnvelope(resp, nil, "POST "+path)
	var fe *FailError
	if errors.As(err, &fe) && fe.HTTPStatus == http.StatusOK {
		return nil, retry.Permanent(errOldRegistry)
	}
	if err == nil {
		err = fmt.Errorf("POST %s: HTTP %d", path, resp.StatusCode)
	}
	return nil, err
}

// Status checks the registry is running.
func (r *Registry) Status(ctx context.Context) (apiv1.RegistryStatus, error) {
	var s apiv1.RegistryStatus
	return s, r.call(ctx, http.MethodGet, "/registry/status", nil, &s)
}

// Templates lists templates.
func (r *Registry) Templates(ctx context.Context) ([]apiv1.Template, error) {
	var t []apiv1.Template
	return t, r.call(ctx, http.MethodGet, "/registry/v2/vm", nil, &t)
}

// Template describes one template with its versions.
func (r *Registry) Template(ctx context.Context, id string) (apiv1.TemplateDetail, error) {
	var t apiv1.TemplateDetail
	return t, r.call(ctx, http.MethodGet, "/registry/vm?id="+url.QueryEscape(id), nil, &t)
}

// Delete removes a template, or one tag of it.
func (r *Registry) Delete(ctx context.Context, id, tag string) error {
	q := "?id=" + url.QueryEscape(id)
	if tag != "" {
		q += "&tag=" + url.QueryEscape(tag)
	}
	return r.call(ctx, http.MethodDelete, "/registry/vm"+q, nil, nil)
}

// Revert drops a template's latest tag.
func (r *Registry) Revert(ctx context.Context, id string) error {
	return r.call(ctx, http.MethodDelete, "/registry/revert?id="+url.QueryEscape(id), nil, nil)
}

// RevertTo drops every tag after tag (or the tag numbered number, when
// number >= 0).
func (r *Registry) RevertTo(ctx context.Context, id, tag string, number int) error {
	q := url.Values{"id": {id}}
	if tag != "" {
		q.Set("tag", tag)
	}
	if number >= 0 {
		q.Set("number", strconv.Itoa(number))
	}
	return r.call(ctx, http.MethodDelete, "/registry/revert?"+q.Encode(), nil, nil)
}

// Disk reports the registry's storage usage.
func (r *Registry) Disk(ctx context.Context) (apiv1.Disk, error) {
	var d apiv1.Disk
	return d, r.call(ctx, http.MethodGet, "/registry/disk", nil, &d)
}

// Manifest returns a tag's manifest ("" = latest tag).
func (r *Registry) Manifest(ctx context.Context, id, tag string) (apiv1.TagManifest, error) {
	var m apiv1.TagManifest
	q := "?id=" + url.QueryEscape(id) + "&tag=" + url.QueryEscape(tag)
	return m, r.call(ctx, http.MethodGet, "/registry/corral/v1/manifest"+q, nil, &m)
}

// FindTemplate returns the id of the template named name (or with that id).
func (r *Registry) FindTemplate(ctx context.Context, nameOrID string) (string, error) {
	list, err := r.Templates(ctx)
	if err != nil {
		return "", err
	}
	for _, t := range list {
		if t.ID == nameOrID || t.Name == nameOrID {
			return t.ID, nil
		}
	}
	return "", fmt.Errorf("no template named or with id %q in %s", nameOrID, r.base)
}

func (r *Registry) startUpload(ctx context.Context) (apiv1.Upload, error) {
	var u apiv1.Upload
	return u, r.call(ctx, http.MethodPost, "/registry/corral/v1/uploads", struct{}{}, &u)
}

func (r *Registry) endUpload(ctx context.Context, id string) error {
	return r.call(ctx, http.MethodDelete, "/registry/corral/v1/uploads/"+url.PathEscape(id), nil, nil)
}

func (r *Registry) missing(ctx context.Context, upload string, digests []string) ([]string, error) {
	var resp apiv1.MissingResponse
	return resp.Missing, r.call(ctx, http.MethodPost, "/registry/corral/v1/chunks/missing",
		apiv1.MissingRequest{UploadID: upload, Digests: digests}, &resp)
}

func (r *Registry) putChunk(ctx context.Context, upload, digest string, encoded []byte) error {
	return r.withRetry(ctx, "upload chunk "+digest[:12], func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPut,
			r.base+"/registry/corral/v1/chunks/"+digest+"?upload="+url.QueryEscape(upload), bytes.NewReader(encoded))
		if err != nil {
			return err
		}
		req.ContentLength = int64(len(encoded))
		resp, err := r.do(req)
		if err != nil {
			return err
		}
		return decodeRegistryEnvelope(resp, nil, "PUT chunk")
	})
}

// getChunk downloads an encoded chunk, resuming with Range after a broken read.
func (r *Registry) getChunk(ctx context.Context, digest string, buf []byte) ([]byte, error) {
	buf = buf[:0]
	err := r.withRetry(ctx, "download chunk "+digest[:12], func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.base+"/registry/corral/v1/chunks/"+digest, nil)
		if err != nil {
			return err
		}
		if len(buf) > 0 {
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-", len(buf)))
		}
		resp, err := r.do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			buf = buf[:0]
		case http.StatusPartialContent:
		case http.StatusNotFound:
			return &FailError{HTTPStatus: 404, Message: "chunk " + digest + " is not in the registry", Registry: true}
		default:
			return &FailError{HTTPStatus: resp.StatusCode, Message: "download chunk " + digest, Registry: true}
		}
		for {
			if len(buf) == cap(buf) {
				buf = append(buf, 0)[:len(buf)]
			}
			n, rerr := resp.Body.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+n]
			if rerr == io.EOF {
				return nil
			}
			if rerr != nil {
				return rerr // retried with Range from len(buf)
			}
		}
	})
	return buf, err
}

func (r *Registry) commit(ctx context.Context, req apiv1.CommitRequest) (apiv1.CommitResponse, []string, error) {
	var resp apiv1.CommitResponse
	err := r.call(ctx, http.MethodPost, "/registry/corral/v1/commit", req, &resp)
	var fe *FailError
	if errors.As(err, &fe) && fe.HTTPStatus == http.StatusConflict && strings.Contains(fe.Message, "chunks are missing") {
		// Ask again to learn which (the FAIL body carries them, but the
		// generic envelope decoder drops FAIL bodies).
		var digests []string
		for _, f := range req.Manifest.Files {
			digests = append(digests, f.Chunks...)
		}
		missing, merr := r.missingAll(ctx, req.UploadID, digests)
		if merr != nil {
			return resp, nil, merr
		}
		return resp, missing, nil
	}
	return resp, nil, err
}
