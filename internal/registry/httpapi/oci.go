package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/corral-build/corral/internal/registry"
)

// oci serves the OCI Distribution API (/v2/) over the registry's store, so
// oras, crane, skopeo and OCI-aware VM tools can push and pull.
func (a *api) oci(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	p := strings.TrimPrefix(r.URL.Path, "/v2/")
	var err error
	switch {
	case p == "" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		writeJSON(w, http.StatusOK, struct{}{})
		return
	case p == "_catalog" && r.Method == http.MethodGet:
		err = a.ociCatalog(w, r)
	case strings.HasSuffix(p, "/tags/list"):
		err = a.ociTags(w, r, strings.TrimSuffix(p, "/tags/list"))
	case strings.Contains(p, "/blobs/uploads/") || strings.HasSuffix(p, "/blobs/uploads"):
		i := strings.LastIndex(p, "/blobs/uploads")
		err = a.ociUpload(w, r, p[:i], strings.Trim(p[i+len("/blobs/uploads"):], "/"))
	case strings.Contains(p, "/manifests/"):
		i := strings.LastIndex(p, "/manifests/")
		err = a.ociManifest(w, r, p[:i], p[i+len("/manifests/"):])
	case strings.Contains(p, "/blobs/"):
		i := strings.LastIndex(p, "/blobs/")
		err = a.ociBlob(w, r, p[:i], p[i+len("/blobs/"):])
	case strings.Contains(p, "/referrers/") && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		i := strings.LastIndex(p, "/referrers/")
		err = a.ociReferrers(w, r, p[:i], p[i+len("/referrers/"):])
	default:
		// Not NAME_UNKNOWN: a client probing an endpoint (oras asks for
		// referrers) must not read it as "no such repository" and stop.
		err = &registry.OCIError{Status: http.StatusNotFound, Code: "UNSUPPORTED", Message: "no such endpoint " + r.URL.Path}
	}
	if err != nil {
		a.ociFail(w, r, err)
	}
}

func (a *api) ociFail(w http.ResponseWriter, r *http.Request, err error) {
	var oe *registry.OCIError
	switch {
	case errors.As(err, &oe):
	case r.Context().Err() != nil:
		return
	case registry.IsNoSpace(err):
		oe = &registry.OCIError{Status: http.StatusInsufficientStorage, Code: "UNKNOWN", Message: a.noSpace(r, err)}
	default:
		a.log.Error("oci request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		oe = &registry.OCIError{Status: http.StatusInternalServerError, Code: "UNKNOWN", Message: "internal error (the registry's log says more)"}
	}
	type item struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	writeJSON(w, oe.Status, map[string][]item{"errors": {{Code: oe.Code, Message: oe.Message}}})
}

func unsupported(r *http.Request) error {
	return &registry.OCIError{Status: http.StatusMethodNotAllowed, Code: "UNSUPPORTED", Message: r.Method + " " + r.URL.Path}
}

func (a *api) ociUpload(w http.ResponseWriter, r *http.Request, repo, id string) error {
	if err := registry.CheckRepoName(repo); err != nil {
		return err
	}
	ctx, q := r.Context(), r.URL.Query()
	uploadURL := func(id string) string { return "/v2/" + repo + "/blobs/uploads/" + id }
	blobCreated := func(digest string) {
		w.Header().Set("Location", "/v2/"+repo+"/blobs/"+digest)
		w.Header().Set("Docker-Content-Digest", digest)
		w.WriteHeader(http.StatusCreated)
	}
	progress := func(code int, id string, size int64) {
		w.Header().Set("Location", uploadURL(id))
		w.Header().Set("Docker-Upload-UUID", id)
		w.Header().Set("Range", fmt.Sprintf("0-%d", max(size-1, 0)))
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(code)
	}
	switch {
	case id == "" && r.Method == http.MethodPost:
		if mount := q.Get("mount"); mount != "" {
			mounted, err := a.reg.OCIMountBlob(ctx, repo, q.Get("from"), mount)
			if err != nil {
				return err
			}
			if mounted {
				blobCreated(mount)
				return nil
			}
		}
		id, err := a.reg.OCIStartUpload(ctx, repo)
		if err != nil {
			return err
		}
		if digest := q.Get("digest"); digest != "" { // monolithic upload
			if err := a.reg.OCIFinishUpload(ctx, repo, id, digest, r.Body); err != nil {
				return err
			}
			blobCreated(digest)
			return nil
		}
		progress(http.StatusAccepted, id, 0)
		return nil
	case id == "":
		return unsupported(r)
	case r.Method == http.MethodPatch:
		start, err := contentRangeStart(r)
		if err != nil {
			return err
		}
		size, err := a.reg.OCIAppend(ctx, repo, id, start, r.Body)
		if err != nil {
			return err
		}
		progress(http.StatusAccepted, id, size)
		return nil
	case r.Method == http.MethodPut:
		digest := q.Get("digest")
		start, err := contentRangeStart(r)
		if err != nil {
			return err
		}
		if start >= 0 {
			// The final chunk must start where the upload ends, as a PATCH's.
			size, err := a.reg.OCIUploadSize(ctx, repo, id)
			if err != nil {
				return err
			}
			if start != size {
				return &registry.OCIError{Status: http.StatusRequestedRangeNotSatisfiable, Code: "BLOB_UPLOAD_INVALID",
					Message: fmt.Sprintf("Content-Range starts at %d, the upload holds %d bytes", start, size)}
			}
		}
		if err := a.reg.OCIFinishUpload(ctx, repo, id, digest, r.Body); err != nil {
			return err
		}
		blobCreated(digest)
		return nil
	case r.Method == http.MethodGet:
		size, err := a.reg.OCIUploadSize(ctx, repo, id)
		if err != nil {
			return err
		}
		progress(http.StatusNoContent, id, size)
		return nil
	case r.Method == http.MethodDelete:
		if err := a.reg.OCICancelUpload(ctx, repo, id); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	return unsupported(r)
}

func (a *api) ociBlob(w http.ResponseWriter, r *http.Request, repo, digest string) error {
	if err := registry.CheckRepoName(repo); err != nil {
		return err
	}
	ctx := r.Context()
	switch r.Method {
	case http.MethodDelete:
		if err := a.reg.OCIDeleteBlob(ctx, repo, digest); err != nil {
			return err
		}
		w.WriteHeader(http.StatusAccepted)
		return nil
	case http.MethodGet, http.MethodHead:
	default:
		return unsupported(r)
	}
	size, err := a.reg.OCIBlobSize(ctx, repo, digest)
	if err != nil {
		return err
	}
	from, to, partial, err := parseRange(r.Header.Get("Range"), size)
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Docker-Content-Digest", digest)
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Accept-Ranges", "bytes")
	h.Set("Content-Length", strconv.FormatInt(to-from, 10))
	code := http.StatusOK
	if partial {
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, to-1, size))
		code = http.StatusPartialContent
	}
	if r.Method == http.MethodHead {
		w.WriteHeader(code)
		return nil
	}
	started := false
	err = a.reg.OCIWriteBlob(ctx, w, func() { started = true; w.WriteHeader(code) }, repo, digest, from, to-from)
	if err != nil && !started {
		return err
	}
	if err != nil && ctx.Err() == nil {
		a.log.Warn("oci blob read", "digest", digest, "err", err)
		panic(http.ErrAbortHandler) // cut the response: the client sees it short
	}
	return nil
}

// contentRangeStart is where a chunk's Content-Range ("a-b" or
// "bytes=a-b") says it starts; -1 without one.
func contentRangeStart(r *http.Request) (int64, error) {
	cr := r.Header.Get("Content-Range")
	if cr == "" {
		return -1, nil
	}
	from, _, _ := strings.Cut(strings.TrimPrefix(cr, "bytes="), "-")
	n, err := strconv.ParseInt(from, 10, 64)
	if err != nil || n < 0 {
		return 0, &registry.OCIError{Status: http.StatusRequestedRangeNotSatisfiable, Code: "BLOB_UPLOAD_INVALID",
			Message: fmt.Sprintf("bad Content-Range %q", cr)}
	}
	return n, nil
}

// parseRange understands one "bytes=a-b", "bytes=a-" or suffix "bytes=-n"
// range.
func parseRange(h string, size int64) (from, to int64, partial bool, err error) {
	if h == "" {
		return 0, size, false, nil
	}
	bad := &registry.OCIError{Status: http.StatusRequestedRangeNotSatisfiable, Code: "SIZE_INVALID",
		Message: fmt.Sprintf("range %q not satisfiable for %d bytes", h, size)}
	spec, ok := strings.CutPrefix(h, "bytes=")
	a, b, ok2 := strings.Cut(spec, "-")
	if !ok || !ok2 || strings.Contains(spec, ",") {
		return 0, 0, false, bad
	}
	if a == "" { // the last n bytes
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n <= 0 || size == 0 {
			return 0, 0, false, bad
		}
		return max(size-n, 0), size, true, nil
	}
	from, err1 := strconv.ParseInt(a, 10, 64)
	to = size
	if b != "" {
		last, err2 := strconv.ParseInt(b, 10, 64)
		if err2 != nil {
			return 0, 0, false, bad
		}
		to = min(last+1, size)
	}
	if err1 != nil || from < 0 || from >= to {
		return 0, 0, false, bad
	}
	return from, to, true, nil
}

func (a *api) ociManifest(w http.ResponseWriter, r *http.Request, repo, ref string) error {
	if err := registry.CheckRepoName(repo); err != nil {
		return err
	}
	ctx := r.Context()
	switch r.Method {
	case http.MethodPut:
		data, err := io.ReadAll(io.LimitReader(r.Body, registry.MaxManifest+1))
		if err != nil {
			return err
		}
		if len(data) > registry.MaxManifest {
			return &registry.OCIError{Status: http.StatusRequestEntityTooLarge, Code: "SIZE_INVALID",
				Message: fmt.Sprintf("manifest larger than %d bytes", registry.MaxManifest)}
		}
		digest, subject, err := a.reg.OCIPutManifestWithSubject(ctx, repo, ref, r.Header.Get("Content-Type"), data)
		if err != nil {
			return err
		}
		if subject != "" {
			w.Header().Set("OCI-Subject", subject) // referrers are listed: no fallback tag needed
		}
		w.Header().Set("Location", "/v2/"+repo+"/manifests/"+digest)
		w.Header().Set("Docker-Content-Digest", digest)
		w.WriteHeader(http.StatusCreated)
		return nil
	case http.MethodDelete:
		if err := a.reg.OCIDeleteManifest(ctx, repo, ref); err != nil {
			return err
		}
		w.WriteHeader(http.StatusAccepted)
		return nil
	case http.MethodGet, http.MethodHead:
		mediaType, data, digest, err := a.reg.OCIGetManifest(ctx, repo, ref)
		if err != nil {
			return err
		}
		if mediaType == "" {
			mediaType = "application/vnd.oci.image.manifest.v1+json"
		}
		w.Header().Set("Content-Type", mediaType)
		w.Header().Set("Docker-Content-Digest", digest)
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			w.Write(data)
		}
		return nil
	}
	return unsupported(r)
}

func (a *api) ociTags(w http.ResponseWriter, r *http.Request, repo string) error {
	if err := registry.CheckRepoName(repo); err != nil {
		return err
	}
	if r.Method != http.MethodGet {
		return unsupported(r)
	}
	tags, err := a.reg.OCITags(r.Context(), repo)
	if err != nil {
		return err
	}
	if len(tags) == 0 {
		if repos, _ := a.reg.OCIRepositories(r.Context()); !slices.Contains(repos, repo) {
			// A template pushed through the Anka registry API?
			native, err := a.reg.NativeTags(r.Context(), repo)
			if errors.Is(err, registry.ErrNotFound) {
				return &registry.OCIError{Status: http.StatusNotFound, Code: "NAME_UNKNOWN", Message: "no repository " + repo}
			}
			if err != nil {
				return err
			}
			tags = native
		}
	}
	page, next := paginate(tags, r)
	if next != "" {
		w.Header().Set("Link", fmt.Sprintf(`</v2/%s/tags/list?n=%s&last=%s>; rel="next"`, repo, r.URL.Query().Get("n"), next))
	}
	writeJSON(w, http.StatusOK, map[string]any{"name": repo, "tags": page})
	return nil
}

func (a *api) ociCatalog(w http.ResponseWriter, r *http.Request) error {
	repos, err := a.reg.OCICatalog(r.Context())
	if err != nil {
		return err
	}
	page, next := paginate(repos, r)
	if next != "" {
		w.Header().Set("Link", fmt.Sprintf(`</v2/_catalog?n=%s&last=%s>; rel="next"`, r.URL.Query().Get("n"), next))
	}
	writeJSON(w, http.StatusOK, map[string]any{"repositories": page})
	return nil
}

// paginate applies ?last= and ?n= to a sorted list; next is the last item
// returned when more remain.
func paginate(all []string, r *http.Request) (page []string, next string) {
	q := r.URL.Query()
	if last := q.Get("last"); last != "" {
		i, _ := slices.BinarySearch(all, last)
		for i < len(all) && all[i] <= last {
			i++
		}
		all = all[i:]
	}
	page = all
	if n, err := strconv.Atoi(q.Get("n")); err == nil && n >= 0 && n < len(all) {
		page = all[:n]
		if n > 0 {
			next = page[n-1]
		}
	}
	if page == nil {
		page = []string{}
	}
	return page, next
}

// ociReferrers answers GET /v2/<name>/referrers/<digest>: an image index of
// the manifests whose subject is digest, filtered by ?artifactType=.
func (a *api) ociReferrers(w http.ResponseWriter, r *http.Request, repo, digest string) error {
	refs, filtered, err := a.reg.OCIReferrers(r.Context(), repo, digest, r.URL.Query().Get("artifactType"))
	if err != nil {
		return err
	}
	data, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": refs})
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
	if filtered {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(data)
	}
	return nil
}
