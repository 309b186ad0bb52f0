package faulty_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/registry/storage"
	"github.com/corral-build/corral/internal/registry/storage/faulty"
	"github.com/corral-build/corral/internal/registry/storage/filesystem"
	"github.com/corral-build/corral/internal/registry/storage/storagetest"
)

func newFS(t *testing.T) storage.Backend {
	b, err := filesystem.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// With no rules the wrapper is the backend it wraps.
func TestConformancePassThrough(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend { return faulty.Wrap(newFS(t), 1) })
}

func TestFailNthAndHang(t *testing.T) {
	ctx := context.Background()
	b := faulty.Wrap(newFS(t), 1)
	b.FailNth(faulty.Put, "x/", 2)
	if err := b.Put(ctx, "x/1", strings.NewReader("a"), storage.Replace); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, "y/1", strings.NewReader("a"), storage.Replace); err != nil {
		t.Fatal("a path outside the prefix must not count")
	}
	if err := b.Put(ctx, "x/2", strings.NewReader("a"), storage.Replace); !errors.Is(err, faulty.ErrInjected) {
		t.Fatalf("second matching Put: %v", err)
	}
	if _, err := b.Stat(ctx, "x/2"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("a failed Put must not write: %v", err)
	}
	if err := b.Put(ctx, "x/3", strings.NewReader("a"), storage.Replace); err != nil {
		t.Fatal("the rule fires once")
	}
	b.HangAll(faulty.Stat, "")
	hctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := b.Stat(hctx, "x/1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hung Stat: %v", err)
	}
	b.Reset()
	b.FailNth(faulty.Read, "", 1)
	rc, err := b.Open(ctx, "x/1", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := rc.Read(make([]byte, 1)); !errors.Is(err, faulty.ErrInjected) {
		t.Fatalf("Read: %v", err)
	}
}
