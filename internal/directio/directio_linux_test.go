package directio_test

import (
	"bytes"
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/corral-build/corral/internal/directio"
	"github.com/corral-build/corral/internal/testenv"
	"golang.org/x/sys/unix"
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

// ReadAt takes a cold file around the page cache and a warm one from it,
// the same bytes either way, the file's short tail included.
func TestReadAtColdAndWarm(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	want := make([]byte, 3*directio.BufSize+100)
	rand.Read(want)
	if err := os.WriteFile(path, want, 0o644); err != nil {
		t.Fatal(err)
	}
	buffered, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer buffered.Close()
	direct, _ := os.Open(path)
	defer direct.Close()
	if err := directio.Enable(direct); err != nil {
		t.Skipf("no direct I/O here: %v", err)
	}
	buffered.Sync()
	unix.Fadvise(int(buffered.Fd()), 0, 0, unix.FADV_DONTNEED)
	read := func() {
		t.Helper()
		p := directio.Alloc(directio.BufSize + directio.Align)
		for off := int64(0); off < int64(len(want)); off += directio.BufSize {
			size := min(directio.BufSize, len(want)-int(off))
			n, err := directio.ReadAt(direct, buffered, p[:size], off)
			if n != size || (err != nil && err != io.EOF) || !bytes.Equal(p[:size], want[off:off+int64(size)]) {
				t.Fatalf("ReadAt %d bytes at %d: %d, %v, same bytes %v", size, off, n, err, bytes.Equal(p[:n], want[off:off+int64(n)]))
			}
		}
	}
	read()
	if resident, pages := testenv.PagesCached(t, path); resident > 0 {
		t.Fatalf("a cold read left %d of %d pages in the page cache", resident, pages)
	}
	data, _ := os.ReadFile(path) // warm now
	_ = data
	read()
}
