package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"slices"
	"strings"

	"github.com/corral-build/corral/internal/registry/storage"
)

// OCI manifests and tags: put, get, delete, tag and repository lists.

// OCIPutManifest stores a manifest under repo, tagged when ref is a tag.
// Every blob it names must be present, and every manifest an index names.
//
// A manifest with a subject is listed among its subject's referrers (the
// subject need not exist); subject is returned for the OCI-Subject header.
func (r *Registry) OCIPutManifest(ctx context.Context, repo, ref, mediaType string, data []byte) (string, error) {
	digest, _, err := r.OCIPutManifestWithSubject(ctx, repo, ref, mediaType, data)
	return digest, err
}

// OCIPutManifestWithSubject is OCIPutManifest that also returns the
// manifest's subject ("" without one).
func (r *Registry) OCIPutManifestWithSubject(ctx context.Context, repo, ref, mediaType string, data []byte) (string, string, error) {
	sum := sha256.Sum256(data)
	hexd := hex.EncodeToString(sum[:])
	digest := "sha256:" + hexd
	isDigest := strings.HasPrefix(ref, "sha256:")
	switch {
	case isDigest && ref != digest:
		return "", "", ociErr(http.StatusBadRequest, "DIGEST_INVALID", "the manifest's digest is %s, not %s", digest, ref)
	case !isDigest && !tagPattern.MatchString(ref):
		return "", "", ociErr(http.StatusBadRequest, "TAG_INVALID", "invalid tag %q", ref)
	}
	blobs, manifests, err := manifestReferences(data)
	if err != nil {
		return "", "", ociErr(http.StatusBadRequest, "MANIFEST_INVALID", "%v", err)
	}
	if mediaType == "" {
		var m struct {
			MediaType string `json:"mediaType"`
		}
		_ = json.Unmarshal(data, &m)
		mediaType = m.MediaType
	}
	for _, d := range blobs {
		if _, err := r.repoBlob(ctx, repo, d); err != nil {
			var oe *OCIError
			if errors.As(err, &oe) {
				return "", "", ociErr(http.StatusBadRequest, "MANIFEST_BLOB_UNKNOWN", "blob %s is not in %s (push or mount it there first)", d, repo)
			}
			return "", "", err
		}
	}
	for _, d := range manifests {
		h, err := ParseDigest(d)
		if err != nil {
			return "", "", err
		}
		if _, err := r.st.Stat(ctx, ociRepoPath(repo)+"/_manifests/"+h); err != nil {
			return "", "", ociErr(http.StatusBadRequest, "MANIFEST_UNKNOWN", "manifest %s is not in %s", d, repo)
		}
	}
	if err := r.writeJSON(ctx, ociManifestPath(hexd), ociManifest{MediaType: mediaType, Data: data}, storage.Replace); err != nil {
		return "", "", err
	}
	if err := r.st.Put(ctx, ociRepoPath(repo)+"/_manifests/"+hexd, strings.NewReader(""), storage.Replace); err != nil {
		return "", "", err
	}
	subject, ref1, err := referrerOf(mediaType, data, digest)
	if err != nil {
		return "", "", ociErr(http.StatusBadRequest, "MANIFEST_INVALID", "subject: %v", err)
	}
	if subject != "" {
		if err := r.linkReferrer(ctx, repo, subject, ref1); err != nil {
			return "", "", err
		}
	}
	if !isDigest {
		if err := r.st.Put(ctx, ociRepoPath(repo)+"/_tags/"+ref, strings.NewReader(hexd), storage.Replace); err != nil {
			return "", "", err
		}
	}
	return digest, subject, nil
}

// manifestReferences returns the blob and manifest digests a manifest or
// index names (config, layers, artifact blobs; child manifests).
func manifestReferences(data []byte) (blobs, manifests []string, err error) {
	type desc struct {
		Digest string `json:"digest"`
	}
	var m struct {
		Config    *desc  `json:"config"`
		Layers    []desc `json:"layers"`
		Blobs     []desc `json:"blobs"`
		Manifests []desc `json:"manifests"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, nil, fmt.Errorf("not JSON: %w", err)
	}
	if m.Config != nil {
		blobs = append(blobs, m.Config.Digest)
	}
	for _, l := range append(m.Layers, m.Blobs...) {
		blobs = append(blobs, l.Digest)
	}
	for _, c := range m.Manifests {
		manifests = append(manifests, c.Digest)
	}
	// Only sha256 digests are stored: refuse others at the edge, so the GC
	// and blob lookups never meet a reference they cannot resolve.
	for _, d := range append(blobs, manifests...) {
		if _, err := ParseDigest(d); err != nil {
			return nil, nil, fmt.Errorf("invalid descriptor digest %q", d)
		}
	}
	return blobs, manifests, nil
}

// OCIGetManifest resolves ref (tag or digest) in repo.
func (r *Registry) OCIGetManifest(ctx context.Context, repo, ref string) (mediaType string, data []byte, digest string, err error) {
	hexd, err := r.resolveRef(ctx, repo, ref)
	if err != nil {
		return "", nil, "", err
	}
	var m ociManifest
	if err := r.readMeta(ctx, ociManifestPath(hexd), &m); err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return "", nil, "", ociErr(http.StatusNotFound, "MANIFEST_UNKNOWN", "manifest %s is not in %s", ref, repo)
		}
		return "", nil, "", err
	}
	return m.MediaType, m.Data, "sha256:" + hexd, nil
}

func (r *Registry) resolveRef(ctx context.Context, repo, ref string) (string, error) {
	unknown := ociErr(http.StatusNotFound, "MANIFEST_UNKNOWN", "manifest %s is not in %s", ref, repo)
	if strings.HasPrefix(ref, "sha256:") {
		hexd, err := ParseDigest(ref)
		if err != nil {
			return "", err
		}
		if _, err := r.st.Stat(ctx, ociRepoPath(repo)+"/_manifests/"+hexd); err != nil {
			return "", unknown
		}
		return hexd, nil
	}
	if !tagPattern.MatchString(ref) {
		return "", unknown // no such tag can exist: 404, as distribution answers
	}
	rc, err := r.st.Open(ctx, ociRepoPath(repo)+"/_tags/"+ref, 0)
	if errors.Is(err, storage.ErrNotFound) {
		return "", unknown
	}
	if err != nil {
		return "", err
	}
	defer rc.Close()
	hexd, err := io.ReadAll(io.LimitReader(rc, 128))
	return string(hexd), err
}

// OCIDeleteManifest removes a tag, or a manifest (by digest) and the tags
// pointing to it, from repo.
func (r *Registry) OCIDeleteManifest(ctx context.Context, repo, ref string) error {
	hexd, err := r.resolveRef(ctx, repo, ref)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(ref, "sha256:") {
		return r.st.Delete(ctx, ociRepoPath(repo)+"/_tags/"+ref)
	}
	tags, err := r.OCITags(ctx, repo)
	if err != nil {
		return err
	}
	for _, tag := range tags {
		if h, err := r.resolveRef(ctx, repo, tag); err == nil && h == hexd {
			if err := r.st.Delete(ctx, ociRepoPath(repo)+"/_tags/"+tag); err != nil {
				return err
			}
		}
	}
	if err := r.unlinkReferrer(ctx, repo, hexd); err != nil {
		return err
	}
	return r.st.Delete(ctx, ociRepoPath(repo)+"/_manifests/"+hexd)
}

// OCITags lists repo's tags, sorted.
func (r *Registry) OCITags(ctx context.Context, repo string) ([]string, error) {
	paths, err := r.st.List(ctx, ociRepoPath(repo)+"/_tags")
	if err != nil {
		return nil, err
	}
	tags := make([]string, 0, len(paths))
	for _, p := range paths {
		tags = append(tags, path.Base(p))
	}
	slices.Sort(tags)
	return tags, nil
}

// OCIRepositories lists repositories holding at least one manifest.
func (r *Registry) OCIRepositories(ctx context.Context) ([]string, error) {
	paths, err := r.st.List(ctx, "oci/repos")
	if err != nil {
		return nil, err
	}
	var repos []string
	for _, p := range paths {
		if repo, _, ok := strings.Cut(strings.TrimPrefix(p, "oci/repos/"), "/_manifests/"); ok && !slices.Contains(repos, repo) {
			repos = append(repos, repo)
		}
	}
	slices.Sort(repos)
	return repos, nil
}
