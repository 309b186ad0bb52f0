package e2e

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/testenv"
	"golang.org/x/sys/unix"
)

// TestTransfersAroundThePageCache: a push stores its packs, and a pull
// writes its image, without filling the page cache (multi-GB templates
// evicted what was hot and paid for page allocation on every transfer).
func TestTransfersAroundThePageCache(t *testing.T) {
	store := t.TempDir()
	reg := testenv.StartRegistry(t, store)
	rc, _ := client.NewRegistry(reg.URL)
	ctx := context.Background()
	src := newVMDir(t, allMiB(48)...)
	evict(t, filepath.Join(src, "disk.img")) // as an image written long ago
	res, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "dense", Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	if resident, pages := testenv.PagesCached(t, filepath.Join(src, "disk.img")); resident > 1 {
		t.Errorf("pushed image: %d of %d pages in the page cache after the push", resident, pages)
	}
	packs, _ := filepath.Glob(filepath.Join(store, "packs", "*.pack"))
	if len(packs) == 0 {
		t.Fatal("no packs stored")
	}
	for _, p := range packs {
		// The index and trailer after the chunks are the unaligned tail.
		if resident, pages := testenv.PagesCached(t, p); resident > 2 {
			t.Errorf("pack %s: %d of %d pages in the page cache after the push", filepath.Base(p), resident, pages)
		}
	}
	dest := t.TempDir()
	if _, err := rc.Pull(ctx, client.PullOptions{TemplateID: res.TemplateID, Dest: dest}); err != nil {
		t.Fatal(err)
	}
	if resident, pages := testenv.PagesCached(t, filepath.Join(dest, "disk.img")); resident > 1 {
		t.Errorf("pulled image: %d of %d pages in the page cache", resident, pages)
	}
	sameFiles(t, src, dest)
}

// evict drops a file's pages from the page cache.
func evict(t *testing.T, path string) {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	if resident, _ := testenv.PagesCached(t, path); resident > 0 {
		t.Fatalf("%s: %d pages still cached", path, resident)
	}
}
