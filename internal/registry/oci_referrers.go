package registry

import (
	"context"
	"encoding/json"
	"errors"
	"path"
	"strings"

	"github.com/corral-build/corral/internal/registry/storage"
)

// OCI 1.1 referrers: a manifest whose subject names another manifest (a
// signature, an SBOM, an attestation attached with cosign, oras or regctl)
// is listed by GET /v2/<name>/referrers/<subject digest>. Each referrer is a
// small link object holding its descriptor, written with the manifest:
//
//	oci/repos/<name>/_referrers/<subject hex>/<referrer hex>   its descriptor (JSON)
//
// A deleted referrer's link goes with it; links whose manifest is gone
// otherwise (an interrupted delete) are skipped when listed and dropped by GC.

// Descriptor is an OCI content descriptor as the referrers index lists it.
type Descriptor struct {
	MediaType    string            `json:"mediaType"`
	Digest       string            `json:"digest"`
	Size         int64             `json:"size"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
}

func ociReferrersPath(repo, subjectHex string) string {
	return ociRepoPath(repo) + "/_referrers/" + subjectHex
}

// referrerOf reads a manifest's subject and the descriptor it is listed by;
// no subject: "".
func referrerOf(mediaType string, data []byte, digest string) (subject string, d Descriptor, err error) {
	var m struct {
		MediaType    string `json:"mediaType"`
		ArtifactType string `json:"artifactType"`
		Config       *struct {
			MediaType string `json:"mediaType"`
		} `json:"config"`
		Subject *struct {
			Digest string `json:"digest"`
		} `json:"subject"`
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(data, &m); err != nil || m.Subject == nil {
		return "", d, nil
	}
	if _, err := ParseDigest(m.Subject.Digest); err != nil {
		return "", d, err
	}
	d = Descriptor{MediaType: mediaType, Digest: digest, Size: int64(len(data)), ArtifactType: m.ArtifactType,
		Annotations: m.Annotations}
	if d.MediaType == "" {
		d.MediaType = m.MediaType
	}
	if d.ArtifactType == "" && m.Config != nil {
		d.ArtifactType = m.Config.MediaType // the spec's fallback for images
	}
	return m.Subject.Digest, d, nil
}

// linkReferrer records a manifest as a referrer of its subject.
func (r *Registry) linkReferrer(ctx context.Context, repo, subject string, d Descriptor) error {
	sh, err := ParseDigest(subject)
	if err != nil {
		return err
	}
	dh, err := ParseDigest(d.Digest)
	if err != nil {
		return err
	}
	return r.writeJSON(ctx, ociReferrersPath(repo, sh)+"/"+dh, d, storage.Replace)
}

// unlinkReferrer forgets a deleted manifest as a referrer.
func (r *Registry) unlinkReferrer(ctx context.Context, repo, hexd string) error {
	var m ociManifest
	if err := r.readMeta(ctx, ociManifestPath(hexd), &m); err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return nil
		}
		return err
	}
	subject, _, err := referrerOf(m.MediaType, m.Data, "sha256:"+hexd)
	if subject == "" || err != nil {
		return nil
	}
	sh, _ := ParseDigest(subject)
	err = r.st.Delete(ctx, ociReferrersPath(repo, sh)+"/"+hexd)
	if errors.Is(err, storage.ErrNotFound) {
		return nil
	}
	return err
}

// OCIReferrers lists the manifests of repo whose subject is digest, those
// of artifactType only when it is not "" (filtered reports whether the
// filter was applied). An unknown subject has none: an empty list.
func (r *Registry) OCIReferrers(ctx context.Context, repo, digest, artifactType string) (refs []Descriptor, filtered bool, err error) {
	if err := CheckRepoName(repo); err != nil {
		return nil, false, err
	}
	sh, err := ParseDigest(digest)
	if err != nil {
		return nil, false, err
	}
	paths, err := r.st.List(ctx, ociReferrersPath(repo, sh))
	if err != nil {
		return nil, false, err
	}
	refs = []Descriptor{}
	for _, p := range paths {
		dh := path.Base(p)
		if _, err := r.st.Stat(ctx, ociRepoPath(repo)+"/_manifests/"+dh); errors.Is(err, storage.ErrNotFound) {
			continue // its manifest was deleted: GC drops the link
		} else if err != nil {
			return nil, false, err
		}
		var d Descriptor
		if err := r.readJSON(ctx, p, &d); errors.Is(err, storage.ErrNotFound) {
			continue
		} else if err != nil {
			return nil, false, err
		}
		if artifactType != "" && d.ArtifactType != artifactType {
			continue
		}
		refs = append(refs, d)
	}
	return refs, artifactType != "", nil
}

// dropDanglingReferrers deletes referrer links whose manifest the repository
// no longer links (GC).
func (r *Registry) dropDanglingReferrers(ctx context.Context, repoPaths []string) error {
	for _, p := range repoPaths {
		repoPart, rest, ok := strings.Cut(strings.TrimPrefix(p, "oci/repos/"), "/_referrers/")
		if !ok {
			continue
		}
		if _, err := r.st.Stat(ctx, ociRepoPath(repoPart)+"/_manifests/"+path.Base(rest)); errors.Is(err, storage.ErrNotFound) {
			if err := r.st.Delete(ctx, p); err != nil && !errors.Is(err, storage.ErrNotFound) {
				return err
			}
		} else if err != nil {
			return err
		}
	}
	return nil
}
