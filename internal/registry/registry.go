// Package registry stores VM templates: templates have tags (1..n), a tag is
// an immutable manifest of files cut into content-addressed chunks (see
// package chunk). All metadata lives in the storage backend itself, so a
// registry needs no etcd and several replicas can share one store.
//
// Storage layout:
//
//	packs/<id>.pack                      encoded chunks (format byte + data) with their index (pack.go)
//	attic/packs/<id>.pack                pack condemned by GC, deleted a grace period later unless rescued
//	chunks/<aa>/<digest>                 loose chunk, as stores before packs wrote them
//	trash/<aa>/<digest>                  loose chunk condemned by GC, deleted next run unless rescued
//	manifests/<digest>.json              immutable manifest
//	names/<template name>                template id (exclusive create: one id per name)
//	templates/<id>/template.json         {id, name, arch}
//	templates/<id>/tags/<number>.json    tag record; exclusive create assigns numbers
//	uploads/<id>.json                    upload lease (GC protection for a push)
//	attic/<path>                         manifest or OCI record condemned by GC, deleted a grace period later unless rescued
//	gc/lock                              lease of the replica running GC (renewed while it runs)
package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"syscall"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
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
	// GCLockTTL is how long a GC lock lives without renewal before the
	// next run takes it over (DefaultGCLockTTL when 0).
	GCLockTTL time.Duration
	// Now is the clock of upload leases and of GC's grace (time.Now when
	// nil); stored files keep the store's own times. Tests set it to put
	// a write explicitly before or after a lease or a grace period.
	Now func() time.Time

	packs *packIndex
	loose looseState

	// OnNoSpace, when set, hears that a write failed for want of space
	// (the daemon collects garbage at once then).
	OnNoSpace func()
}

// IsNoSpace reports whether err is a store out of space (or quota).
func IsNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// NoSpace reports a write that failed for want of space and returns the
// store's free bytes (-1 when it cannot say).
func (r *Registry) NoSpace(ctx context.Context) int64 {
	if r.OnNoSpace != nil {
		r.OnNoSpace()
	}
	_, free, err := r.st.Usage(ctx)
	if err != nil {
		return -1
	}
	return free
}

// DefaultGCLockTTL bounds how long a GC run that died keeps others from
// collecting: a live run renews its lock every quarter of it.
const DefaultGCLockTTL = 2 * time.Minute

// New returns a Registry over st.
func New(st storage.Backend, log *slog.Logger) *Registry {
	return &Registry{st: st, log: log, Grace: time.Hour, UploadTTL: 24 * time.Hour, packs: newPackIndex(st, log)}
}

func (r *Registry) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
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

// StartUpload opens an upload lease.
func (r *Registry) StartUpload(ctx context.Context, id string) (time.Time, error) {
	now := r.now().UTC()
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
