// Package registry stores VM templates: templates have tags (1..n), a tag is
// an immutable manifest of files cut into content-addressed chunks (see
// package chunk). All metadata lives in the storage backend itself, so a
// registry needs no etcd and several replicas can share one store.
//
// Storage layout:
//
//	chunks/<aa>/<digest>                 encoded chunk (format byte + data)
//	trash/<aa>/<digest>                  chunk condemned by GC, deleted next run unless rescued
//	manifests/<digest>.json              immutable manifest
//	names/<template name>                template id (exclusive create: one id per name)
//	templates/<id>/template.json         {id, name, arch}
//	templates/<id>/tags/<number>.json    tag record; exclusive create assigns numbers
//	uploads/<id>.json                    upload lease (GC protection for a push)
//	attic/<path>                         manifest or OCI record condemned by GC, deleted a grace period later unless rescued
//	gc/lock                              held by the replica running GC
package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/registry/chunk"
	"github.com/corral-build/corral/internal/registry/storage"
)

// Domain errors; the HTTP layer maps them to FAIL messages and codes.
var (
	ErrNotFound    = errors.New("not found")
	ErrTagNotFound = errors.New("tag not found")
	ErrTagExists   = errors.New("tag exists")
)

// InvalidError names the bad input.
type InvalidError struct{ Field, Reason string }

func (e *InvalidError) Error() string { return e.Field + ": " + e.Reason }

// MissingChunksError is returned by Commit when chunks are absent.
type MissingChunksError struct{ Digests []string }

func (e *MissingChunksError) Error() string {
	return fmt.Sprintf("%d chunks are missing from the registry; upload them and commit again", len(e.Digests))
}

// validName admits template, tag and file names: no slashes, no traversal.
var validName = apiv1.NamePattern

// Registry is the template store.
type Registry struct {
	st  storage.Backend
	log *slog.Logger
	// Grace protects recently written chunks and manifests from GC.
	Grace time.Duration
	// UploadTTL is how long an upload lease lives without activity.
	UploadTTL time.Duration
}

// New returns a Registry over st.
func New(st storage.Backend, log *slog.Logger) *Registry {
	return &Registry{st: st, log: log, Grace: time.Hour, UploadTTL: 24 * time.Hour}
}

// Backend exposes the storage for disk usage.
func (r *Registry) Backend() storage.Backend { return r.st }

func chunkPath(d string) string     { return "chunks/" + d[:2] + "/" + d }
func trashPath(d string) string     { return "trash/" + d[:2] + "/" + d }
func manifestPath(d string) string  { return "manifests/" + d + ".json" }
func templatePath(id string) string { return "templates/" + id + "/template.json" }
func tagPath(id string, n int) string {
	return fmt.Sprintf("templates/%s/tags/%08d.json", id, n)
}

func (r *Registry) readJSON(ctx context.Context, path string, v any) error {
	rc, err := r.st.Open(ctx, path, 0)
	if err != nil {
		return err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode %s: %w", path, err)
	}
	return nil
}

func (r *Registry) writeJSON(ctx context.Context, path string, v any, mode storage.PutMode) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return r.st.Put(ctx, path, bytes.NewReader(data), mode)
}

// Missing returns the digests the store lacks. Present chunks are touched, so
// GC keeps them while the push that asked is under way.
func (r *Registry) Missing(ctx context.Context, digests []string) ([]string, error) {
	var missing []string
	for _, d := range digests {
		if !chunk.ValidDigest(d) {
			return nil, &InvalidError{"digests", fmt.Sprintf("%q is not a sha256 hex digest", d)}
		}
		ok, err := r.ensureChunk(ctx, d)
		if err != nil {
			return nil, err
		}
		if !ok {
			missing = append(missing, d)
		}
	}
	return missing, nil
}

// ensureChunk reports whether the chunk exists, rescuing it from GC's trash
// and refreshing its modification time. An empty chunk file (what a power
// loss can leave of a chunk written just before it) counts as missing.
func (r *Registry) ensureChunk(ctx context.Context, d string) (bool, error) {
	info, err := r.st.Stat(ctx, chunkPath(d))
	if err == nil && info.Size <= 1 {
		_ = r.st.Delete(ctx, chunkPath(d))
		err = storage.ErrNotFound
	}
	if err == nil {
		err = r.st.Touch(ctx, chunkPath(d))
	}
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, storage.ErrNotFound) {
		return false, err
	}
	if err := r.st.Rename(ctx, trashPath(d), chunkPath(d)); err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return false, nil
		}
		return false, err
	}
	r.log.Info("chunk rescued from GC trash", "digest", d)
	return true, r.st.Touch(ctx, chunkPath(d))
}

// PutChunk verifies an encoded chunk against its digest and stores it.
// Concurrent puts of one chunk are safe: both write the same bytes atomically.
func (r *Registry) PutChunk(ctx context.Context, digest string, encoded []byte, scratch []byte) error {
	if !chunk.ValidDigest(digest) {
		return &InvalidError{"digest", fmt.Sprintf("%q is not a sha256 hex digest", digest)}
	}
	if len(encoded) > chunk.MaxEncoded {
		return &InvalidError{"chunk", fmt.Sprintf("%d bytes, more than the %d-byte limit", len(encoded), chunk.MaxEncoded)}
	}
	raw, err := chunk.Decode(scratch, encoded, digest)
	if err != nil {
		return &InvalidError{"chunk", err.Error()}
	}
	if chunk.IsZero(raw) {
		return &InvalidError{"chunk", "all-zero chunks are implicit; list them as \"\" in the manifest"}
	}
	if ok, err := r.ensureChunk(ctx, digest); err != nil || ok {
		return err
	}
	return r.st.Put(ctx, chunkPath(digest), bytes.NewReader(encoded), storage.Unsynced)
}

// OpenChunk returns an encoded chunk from offset.
func (r *Registry) OpenChunk(ctx context.Context, digest string, offset int64) (io.ReadCloser, int64, error) {
	if !chunk.ValidDigest(digest) {
		return nil, 0, &InvalidError{"digest", fmt.Sprintf("%q is not a sha256 hex digest", digest)}
	}
	info, err := r.st.Stat(ctx, chunkPath(digest))
	if errors.Is(err, storage.ErrNotFound) {
		ok, rerr := r.ensureChunk(ctx, digest)
		if rerr != nil {
			return nil, 0, fmt.Errorf("chunk %s: %w", digest, rerr) // an I/O error is not a 404
		}
		if !ok {
			return nil, 0, ErrNotFound
		}
		info, err = r.st.Stat(ctx, chunkPath(digest))
	}
	if err != nil {
		return nil, 0, err
	}
	rc, err := r.st.Open(ctx, chunkPath(digest), offset)
	return rc, info.Size, err
}

// StartUpload opens an upload lease.
func (r *Registry) StartUpload(ctx context.Context, id string) (time.Time, error) {
	now := time.Now().UTC()
	return now, r.writeJSON(ctx, "uploads/"+id+".json", map[string]any{"started": now}, storage.Exclusive)
}

// TouchUpload renews an upload lease; unknown ids are not an error (the
// commit's verification is what guarantees completeness).
func (r *Registry) TouchUpload(ctx context.Context, id string) {
	if id != "" && validName.MatchString(id) {
		_ = r.st.Touch(ctx, "uploads/"+id+".json")
	}
}

// EndUpload releases an upload lease.
func (r *Registry) EndUpload(ctx context.Context, id string) error {
	if !validName.MatchString(id) {
		return &InvalidError{"upload_id", "invalid"}
	}
	return r.st.Delete(ctx, "uploads/"+id+".json")
}
