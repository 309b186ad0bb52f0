package registry

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/registry/chunk"
)

// The OCI Distribution store lives beside the templates and shares their
// chunks: a blob is a list of 1 MiB chunks (so a disk image pushed with
// oras dedups against the same disk pushed as a template), manifests are
// stored whole, tags and repository membership are small objects.
//
//	oci/blobs/<hex>.json                 ociBlob: size and chunk digests
//	oci/manifests/<hex>.json             ociManifest: media type and bytes
//	oci/repos/<name>/_manifests/<hex>    the repository holds this manifest
//	oci/repos/<name>/_tags/<tag>         the tag's manifest digest (hex)
//	oci/uploads/<id>/session.json        ociUpload: an upload in progress
//	oci/uploads/<id>/tail-<size>         its bytes after the last full chunk
//
// An upload also holds a lease (uploads/<id>.json) like a template push, so
// GC keeps the chunks it has written.

// OCIError is an error of the distribution spec's error format.
type OCIError struct {
	Status  int
	Code    string // BLOB_UNKNOWN, DIGEST_INVALID, ...
	Message string
}

func (e *OCIError) Error() string { return e.Code + ": " + e.Message }

func ociErr(status int, code, format string, args ...any) *OCIError {
	return &OCIError{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// MaxManifest bounds a manifest (the distribution spec suggests 4 MiB).
const MaxManifest = 4 << 20

var (
	repoNamePattern = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagPattern      = apiv1.SafeName(regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`))
)

// CheckRepoName validates a repository name.
func CheckRepoName(name string) error {
	if len(name) > 255 || !repoNamePattern.MatchString(name) {
		return ociErr(http.StatusBadRequest, "NAME_INVALID", "invalid repository name %q", name)
	}
	return nil
}

// ParseDigest accepts "sha256:<64 hex>" and returns the hex part.
func ParseDigest(d string) (string, error) {
	hexPart, ok := strings.CutPrefix(d, "sha256:")
	if !ok || !chunk.ValidDigest(hexPart) {
		return "", ociErr(http.StatusBadRequest, "DIGEST_INVALID", "%q is not a sha256 digest", d)
	}
	return hexPart, nil
}

type ociBlob struct {
	Size   int64    `json:"size"`
	Chunks []string `json:"chunks"` // "" for an all-zero chunk
}

type ociManifest struct {
	MediaType string `json:"media_type"`
	Data      []byte `json:"data"`
}

type ociUpload struct {
	Repo      string    `json:"repo"`
	Size      int64     `json:"size"`
	Chunks    []string  `json:"chunks"`
	HashState []byte    `json:"hash_state"` // sha256 of all Size bytes, marshaled
	Started   time.Time `json:"started"`
}

func ociBlobPath(hexd string) string     { return "oci/blobs/" + hexd + ".json" }
func ociManifestPath(hexd string) string { return "oci/manifests/" + hexd + ".json" }
func ociSessionPath(id string) string    { return "oci/uploads/" + id + "/session.json" }
func ociTailPath(id string, size int64) string {
	return fmt.Sprintf("oci/uploads/%s/tail-%d", id, size)
}
func ociRepoPath(repo string) string { return "oci/repos/" + repo }

// A blob is reachable in a repository through a link, written when it is
// pushed or mounted there or named by a manifest put there. Links of
// repositories written before links existed are made once, from their
// manifests, the first time a blob is missed there (the _links marker).
func ociLinkPath(repo, hexd string) string { return ociRepoPath(repo) + "/_layers/" + hexd }
func ociLinkedMarker(repo string) string   { return ociRepoPath(repo) + "/_links" }

var errUploadUnknown = ociErr(http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN", "no such upload")
