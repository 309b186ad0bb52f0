// Package filesystem stores registry objects as files under a directory. It is
// safe for several registry replicas on one shared volume: writes go to a
// unique temporary name, are fsynced, then renamed (or hard-linked, for
// exclusive creation) into place.
package filesystem

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/corral-build/corral/internal/directio"
	"github.com/corral-build/corral/internal/hostinfo"
	"github.com/corral-build/corral/internal/registry/storage"
)

// Backend is a directory-backed storage.Backend.
type Backend struct{ root string }

// New returns a backend rooted at dir, creating it if needed.
func New(dir string) (*Backend, error) {
	if err := os.MkdirAll(filepath.Join(dir, ".tmp"), 0o755); err != nil {
		return nil, fmt.Errorf("storage root %s: %w", dir, err)
	}
	return &Backend{root: dir}, nil
}

// path maps an object path to a file, refusing anything that escapes root.
func (b *Backend) path(p string) (string, error) {
	if err := storage.CheckPath(p); err != nil {
		return "", err
	}
	if p == ".tmp" || strings.HasPrefix(p, ".tmp/") {
		return "", fmt.Errorf("storage: invalid path %q", p)
	}
	return filepath.Join(b.root, filepath.FromSlash(p)), nil
}

func (b *Backend) Put(ctx context.Context, p string, r io.Reader, mode storage.PutMode) error {
	dst, err := b.path(p)
	if err != nil {
		return err
	}
	var suffix [8]byte
	_, _ = rand.Read(suffix[:])
	tmp := filepath.Join(b.root, ".tmp", filepath.Base(dst)+"."+hex.EncodeToString(suffix[:]))
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("storage put %s: %w", p, err)
	}
	defer os.Remove(tmp) // no-op after a successful rename
	direct := directio.Enable(f) == nil
	if direct {
		// Objects (packs, blobs) are written once and rarely read soon:
		// around the page cache, which costs more than the copy here.
		_, err = directio.Copy(f, readerWithContext{ctx, r})
	} else {
		bufp := copyBufs.Get().(*[]byte)
		_, err = io.CopyBuffer(writerOnly{f}, readerWithContext{ctx, r}, *bufp)
		copyBufs.Put(bufp)
	}
	if err == nil && mode != storage.Unsynced {
		err = f.Sync()
	} else if err == nil && !direct {
		hostinfo.StartWriteback(f) // the commit's Sync then finds little left
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = ctx.Err() // a caller gone by now must not see its object appear later
	}
	if err != nil {
		return fmt.Errorf("storage put %s: %w", p, err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("storage put %s: %w", p, err)
	}
	if mode == storage.Exclusive {
		// link fails if dst exists: atomic create-if-absent, also on NFS.
		if err := os.Link(tmp, dst); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return storage.ErrExists
			}
			return fmt.Errorf("storage put %s: %w", p, err)
		}
		return syncDir(filepath.Dir(dst))
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("storage put %s: %w", p, err)
	}
	if mode == storage.Unsynced {
		return nil
	}
	return syncDir(filepath.Dir(dst))
}

// Sync flushes the whole filesystem holding the store (syncfs), which is far
// cheaper than one fsync per chunk.
func (b *Backend) Sync(context.Context) error {
	if err := hostinfo.SyncFS(b.root); err != nil {
		return fmt.Errorf("storage sync: %w", err)
	}
	return nil
}

// syncDir makes a rename durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	_ = d.Sync() // some filesystems refuse fsync on directories
	return nil
}

func (b *Backend) Open(_ context.Context, p string, offset int64) (io.ReadCloser, error) {
	path, err := b.path(p)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, storage.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("storage open %s: %w", p, err)
	}
	if offset > 0 {
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			f.Close()
			return nil, fmt.Errorf("storage open %s at %d: %w", p, offset, err)
		}
	}
	return f, nil
}

func (b *Backend) Stat(_ context.Context, p string) (storage.Info, error) {
	path, err := b.path(p)
	if err != nil {
		return storage.Info{}, err
	}
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return storage.Info{}, storage.ErrNotFound
	}
	if err != nil {
		return storage.Info{}, fmt.Errorf("storage stat %s: %w", p, err)
	}
	return storage.Info{Size: st.Size(), ModTime: st.ModTime()}, nil
}

func (b *Backend) List(_ context.Context, prefix string) ([]string, error) {
	dir, err := b.path(prefix)
	if err != nil {
		return nil, err
	}
	var out []string
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(b.root, path)
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("storage list %s: %w", prefix, err)
	}
	sort.Strings(out)
	return out, nil
}

func (b *Backend) Delete(ctx context.Context, p string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("storage delete %s: %w", p, err)
	}
	path, err := b.path(p)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("storage delete %s: %w", p, err)
	}
	return nil
}

func (b *Backend) Rename(ctx context.Context, src, dst string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("storage rename %s: %w", src, err)
	}
	from, err := b.path(src)
	if err != nil {
		return err
	}
	to, err := b.path(dst)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return fmt.Errorf("storage rename %s: %w", src, err)
	}
	if err := os.Rename(from, to); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return storage.ErrNotFound
		}
		return fmt.Errorf("storage rename %s -> %s: %w", src, dst, err)
	}
	return nil
}

func (b *Backend) Touch(ctx context.Context, p string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("storage touch %s: %w", p, err)
	}
	path, err := b.path(p)
	if err != nil {
		return err
	}
	now := time.Now()
	if err := os.Chtimes(path, now, now); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return storage.ErrNotFound
		}
		return fmt.Errorf("storage touch %s: %w", p, err)
	}
	return nil
}

func (b *Backend) PurgeIncomplete(_ context.Context, age time.Duration) (int, error) {
	entries, err := os.ReadDir(filepath.Join(b.root, ".tmp"))
	if err != nil {
		return 0, fmt.Errorf("storage purge: %w", err)
	}
	n := 0
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || time.Since(info.ModTime()) < age {
			continue
		}
		if os.Remove(filepath.Join(b.root, ".tmp", e.Name())) == nil {
			n++
		}
	}
	return n, nil
}

func (b *Backend) Usage(context.Context) (int64, int64, error) {
	return hostinfo.DiskUsage(b.root)
}

// copyBufs hold the 1 MiB buffers Put copies through: one write(2) per
// MiB instead of per 32 KiB.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// writerOnly hides the file's ReaderFrom, whose generic fallback copies in
// 32 KiB pieces.
type writerOnly struct{ io.Writer }

type readerWithContext struct {
	ctx context.Context
	r   io.Reader
}

func (r readerWithContext) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}
