package filesystem

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/registry/storage"
	"github.com/corral-build/corral/internal/registry/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		b, err := New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}

func TestPurgeIncomplete(t *testing.T) {
	dir := t.TempDir()
	b, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(dir, ".tmp", "chunk.crashed")
	fresh := filepath.Join(dir, ".tmp", "chunk.writing")
	os.WriteFile(old, []byte("half"), 0o644)
	os.WriteFile(fresh, []byte("half"), 0o644)
	past := time.Now().Add(-2 * time.Hour)
	os.Chtimes(old, past, past)
	n, err := b.PurgeIncomplete(context.Background(), time.Hour)
	if err != nil || n != 1 {
		t.Fatalf("purged %d, err %v", n, err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Fatal("stale temp file kept")
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Fatal("in-progress temp file removed")
	}
}

// TestUsageIsTheVolumes: the conformance suite accepts (0, 0) ("unknown",
// as on S3); a directory always knows: its volume's size and free space.
func TestUsageIsTheVolumes(t *testing.T) {
	dir := t.TempDir()
	b, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	total, free, err := b.Usage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if want := int64(st.Blocks) * int64(st.Bsize); total != want || free <= 0 || free > total {
		t.Fatalf("usage total %d free %d, want total %d and 0 < free <= total", total, free, want)
	}
}
