package directio_test

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/corral-build/corral/internal/directio"
	"github.com/corral-build/corral/internal/testenv"
)

func TestCopyLeavesNothingInThePageCache(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := directio.Enable(f); err != nil {
		t.Skipf("no direct I/O here: %v", err)
	}
	data := make([]byte, 8*directio.BufSize+5)
	rand.Read(data)
	if _, err := directio.Copy(f, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	// Only the unaligned tail's page went through the cache.
	if resident, pages := testenv.PagesCached(t, path); resident > 1 {
		t.Fatalf("%d of %d pages in the page cache after a direct copy", resident, pages)
	}
}
