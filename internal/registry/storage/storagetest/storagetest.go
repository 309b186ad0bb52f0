// Package storagetest is the conformance suite every storage backend passes.
package storagetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/registry/storage"
)

// Run exercises b; each backend's test calls it with a fresh, empty backend.
func Run(t *testing.T, newBackend func(t *testing.T) storage.Backend) {
	ctx := context.Background()
	read := func(t *testing.T, b storage.Backend, p string, off int64) string {
		t.Helper()
		rc, err := b.Open(ctx, p, off)
		if err != nil {
			t.Fatalf("open %s: %v", p, err)
		}
		defer rc.Close()
		data, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	t.Run("PutOpenStat", func(t *testing.T) {
		b := newBackend(t)
		if err := b.Put(ctx, "a/b/c", strings.NewReader("hello world"), storage.Replace); err != nil {
			t.Fatal(err)
		}
		if got := read(t, b, "a/b/c", 0); got != "hello world" {
			t.Fatalf("got %q", got)
		}
		if got := read(t, b, "a/b/c", 6); got != "world" {
			t.Fatalf("at offset: got %q", got)
		}
		info, err := b.Stat(ctx, "a/b/c")
		if err != nil || info.Size != 11 || time.Since(info.ModTime) > time.Minute {
			t.Fatalf("stat %+v %v", info, err)
		}
		if err := b.Put(ctx, "a/b/c", strings.NewReader("new"), storage.Replace); err != nil {
			t.Fatal(err)
		}
		if got := read(t, b, "a/b/c", 0); got != "new" {
			t.Fatalf("overwrite: got %q", got)
		}
	})
	t.Run("NotFound", func(t *testing.T) {
		b := newBackend(t)
		if _, err := b.Open(ctx, "missing", 0); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("open: %v", err)
		}
		if _, err := b.Stat(ctx, "missing"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("stat: %v", err)
		}
		if err := b.Touch(ctx, "missing"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("touch: %v", err)
		}
		if err := b.Rename(ctx, "missing", "x"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("rename: %v", err)
		}
		if err := b.Delete(ctx, "missing"); err != nil {
			t.Fatalf("delete missing: %v", err)
		}
	})
	t.Run("Exclusive", func(t *testing.T) {
		b := newBackend(t)
		var wg sync.WaitGroup
		var mu sync.Mutex
		wins := 0
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := b.Put(ctx, "tags/1", strings.NewReader(fmt.Sprint(i)), storage.Exclusive)
				if err == nil {
					mu.Lock()
					wins++
					mu.Unlock()
				} else if !errors.Is(err, storage.ErrExists) {
					t.Errorf("exclusive put: %v", err)
				}
			}()
		}
		wg.Wait()
		if wins != 1 {
			t.Fatalf("%d exclusive creates succeeded, want 1", wins)
		}
	})
	t.Run("ListDeleteRename", func(t *testing.T) {
		b := newBackend(t)
		for _, p := range []string{"x/2", "x/1", "x/sub/3", "y/1"} {
			if err := b.Put(ctx, p, strings.NewReader(p), storage.Replace); err != nil {
				t.Fatal(err)
			}
		}
		got, err := b.List(ctx, "x")
		if err != nil || strings.Join(got, ",") != "x/1,x/2,x/sub/3" {
			t.Fatalf("list: %v %v", got, err)
		}
		if got, err := b.List(ctx, "none"); err != nil || len(got) != 0 {
			t.Fatalf("list of missing prefix: %v %v", got, err)
		}
		if err := b.Rename(ctx, "x/1", "trash/1"); err != nil {
			t.Fatal(err)
		}
		if read(t, b, "trash/1", 0) != "x/1" {
			t.Fatal("rename lost content")
		}
		if err := b.Delete(ctx, "x/2"); err != nil {
			t.Fatal(err)
		}
		if got, _ := b.List(ctx, "x"); strings.Join(got, ",") != "x/sub/3" {
			t.Fatalf("after delete/rename: %v", got)
		}
	})
	t.Run("Touch", func(t *testing.T) {
		b := newBackend(t)
		_ = b.Put(ctx, "t", strings.NewReader("t"), storage.Replace)
		before, _ := b.Stat(ctx, "t")
		time.Sleep(1100 * time.Millisecond) // S3's LastModified has one-second resolution
		if err := b.Touch(ctx, "t"); err != nil {
			t.Fatal(err)
		}
		after, _ := b.Stat(ctx, "t")
		if !after.ModTime.After(before.ModTime) {
			t.Fatalf("touch did not advance mtime: %v -> %v", before.ModTime, after.ModTime)
		}
	})
	t.Run("PathTraversal", func(t *testing.T) {
		b := newBackend(t)
		for _, p := range []string{"../escape", "a/../../b", ""} {
			if err := b.Put(ctx, p, strings.NewReader("x"), storage.Replace); err == nil {
				t.Errorf("put %q accepted", p)
			}
		}
	})
	t.Run("FailedPutLeavesNothing", func(t *testing.T) {
		b := newBackend(t)
		cctx, cancel := context.WithCancel(ctx)
		r := io.MultiReader(bytes.NewReader(make([]byte, 1024)), readerFunc(func([]byte) (int, error) {
			cancel()
			return 0, errors.New("connection reset")
		}))
		if err := b.Put(cctx, "half", r, storage.Replace); err == nil {
			t.Fatal("put of a broken stream succeeded")
		}
		if _, err := b.Stat(ctx, "half"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("half-written object visible: %v", err)
		}
	})
	t.Run("CancelledCallerChangesNothing", func(t *testing.T) {
		// A GC run that lost its lease stops through its context: no
		// mutation may land once the caller is gone.
		b := newBackend(t)
		_ = b.Put(ctx, "keep", strings.NewReader("k"), storage.Replace)
		gone, cancel := context.WithCancel(ctx)
		cancel()
		if err := b.Put(gone, "new", strings.NewReader("n"), storage.Replace); err == nil {
			t.Error("put with a cancelled context succeeded")
		}
		if err := b.Delete(gone, "keep"); err == nil {
			t.Error("delete with a cancelled context succeeded")
		}
		if err := b.Rename(gone, "keep", "moved"); err == nil {
			t.Error("rename with a cancelled context succeeded")
		}
		if err := b.Touch(gone, "keep"); err == nil {
			t.Error("touch with a cancelled context succeeded")
		}
		if info, err := b.Stat(ctx, "keep"); err != nil || info.Size != 1 {
			t.Fatalf("after cancelled calls keep: %+v, %v", info, err)
		}
		for _, p := range []string{"new", "moved"} {
			if _, err := b.Stat(ctx, p); !errors.Is(err, storage.ErrNotFound) {
				t.Errorf("after cancelled calls %s: %v, want not found", p, err)
			}
		}
	})
	t.Run("UnsyncedThenSync", func(t *testing.T) {
		// Unsynced objects are whole and visible at once (a commit reads
		// them back before Sync), replace atomically like any Put, and every
		// one of them is still there, unchanged, after Sync.
		b := newBackend(t)
		if err := b.Sync(ctx); err != nil {
			t.Fatalf("Sync with nothing pending: %v", err)
		}
		if err := b.Put(ctx, "c/0", strings.NewReader("old"), storage.Replace); err != nil {
			t.Fatal(err)
		}
		for i := range 40 {
			if err := b.Put(ctx, fmt.Sprintf("c/%d", i), strings.NewReader(fmt.Sprintf("chunk %d", i)), storage.Unsynced); err != nil {
				t.Fatal(err)
			}
		}
		if got := read(t, b, "c/0", 0); got != "chunk 0" {
			t.Fatalf("before Sync: got %q, want the replacing unsynced object", got)
		}
		if err := b.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		for i := range 40 {
			if got, want := read(t, b, fmt.Sprintf("c/%d", i), 0), fmt.Sprintf("chunk %d", i); got != want {
				t.Fatalf("after Sync: c/%d is %q, want %q", i, got, want)
			}
		}
		if list, err := b.List(ctx, "c"); err != nil || len(list) != 40 {
			t.Fatalf("after Sync: %d objects listed (%v), want 40", len(list), err)
		}
		if err := b.Sync(ctx); err != nil {
			t.Fatalf("second Sync: %v", err)
		}
	})
	t.Run("Usage", func(t *testing.T) {
		b := newBackend(t)
		total, free, err := b.Usage(ctx)
		if err != nil || total < free || free < 0 {
			t.Fatalf("usage %d %d %v", total, free, err)
		}
	})
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }
