// Package storage is the registry's backend interface: a few object-store
// operations that a directory (filesystem/) or S3-compatible storage can
// provide. storagetest/ holds the one conformance suite every backend passes.
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"
)

// ErrNotFound is returned for a missing path.
var ErrNotFound = errors.New("storage: not found")

// ErrExists is returned by an exclusive Put when the path exists.
var ErrExists = errors.New("storage: already exists")

// Info describes a stored object.
type Info struct {
	Size    int64
	ModTime time.Time
}

// PutMode chooses how a Put lands.
type PutMode int

const (
	// Replace writes durably, replacing any object at the path.
	Replace PutMode = iota
	// Exclusive writes durably and fails with ErrExists if the path exists
	// (tag numbers, name claims, locks).
	Exclusive
	// Unsynced replaces atomically but is durable only after Sync: for
	// chunks, which a commit syncs in one call before publishing a tag.
	Unsynced
)

// Backend stores immutable objects under slash-separated paths. Every Put is
// atomic: readers see the old object, no object, or the whole new one.
type Backend interface {
	Put(ctx context.Context, path string, r io.Reader, mode PutMode) error
	// Sync makes every completed Put durable.
	Sync(ctx context.Context) error
	// Open reads path from offset.
	Open(ctx context.Context, path string, offset int64) (io.ReadCloser, error)
	Stat(ctx context.Context, path string) (Info, error)
	// List returns the paths directly or indirectly under prefix, sorted.
	List(ctx context.Context, prefix string) ([]string, error)
	// Delete removes path; a missing path is not an error.
	Delete(ctx context.Context, path string) error
	// Rename moves an object, replacing dst; dst appears whole, atomically.
	// On object stores (copy, then delete) src may stay visible for a moment
	// after dst appears: the registry re-checks chunks at commit, so that is safe.
	Rename(ctx context.Context, src, dst string) error
	// Touch sets path's modification time to now (GC protection).
	Touch(ctx context.Context, path string) error
	// PurgeIncomplete removes the leftovers of writes that never finished
	// (a crash mid-Put) older than age, returning how many it removed.
	PurgeIncomplete(ctx context.Context, age time.Duration) (int, error)
	// Usage reports total and free bytes of the store (0, 0 if unknown).
	Usage(ctx context.Context) (total, free int64, err error)
}

// CheckPath refuses paths that every backend must refuse: empty, absolute,
// not in canonical form, or climbing out of the store with "..".
func CheckPath(p string) error {
	if p == "" || strings.HasPrefix(p, "/") || strings.Contains(p, "..") || strings.Contains(p, `\`) || path.Clean(p) != p {
		return fmt.Errorf("storage: invalid path %q", p)
	}
	return nil
}
