package filesystem_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"path/filepath"
	"testing"

	"github.com/corral-build/corral/internal/registry/storage"
	"github.com/corral-build/corral/internal/registry/storage/filesystem"
	"github.com/corral-build/corral/internal/testenv"
)

// A stored object (a pack, a blob) does not fill the page cache: a push
// of many GiB would evict what is hot and pay for page allocation.
func TestPutBypassesThePageCache(t *testing.T) {
	dir := t.TempDir()
	b, err := filesystem.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 16<<20+123)
	rand.Read(data)
	for _, mode := range []storage.PutMode{storage.Unsynced, storage.Replace} {
		if err := b.Put(context.Background(), "packs/p.pack", io.MultiReader(bytes.NewReader(data[:5]), bytes.NewReader(data[5:])), mode); err != nil {
			t.Fatal(err)
		}
		if resident, pages := testenv.PagesCached(t, filepath.Join(dir, "packs", "p.pack")); resident > 1 {
			t.Fatalf("mode %d: %d of %d pages of a stored object are in the page cache", mode, resident, pages)
		}
		rc, err := b.Open(context.Background(), "packs/p.pack", 0)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(rc)
		rc.Close()
		if !bytes.Equal(got, data) {
			t.Fatalf("mode %d: read back %d bytes that differ", mode, len(got))
		}
	}
}
