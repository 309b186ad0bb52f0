package directio_test

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/corral-build/corral/internal/directio"
)

func TestCopyWritesEverySize(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []int{0, 1, directio.Align - 1, directio.Align, directio.Align + 1, directio.BufSize, directio.BufSize + 1, 3*directio.BufSize + 17} {
		want := make([]byte, n)
		rand.Read(want)
		path := filepath.Join(dir, "f")
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := directio.Enable(f); err != nil {
			t.Skipf("no direct I/O on %s: %v", dir, err) // tested where it exists; callers fall back
		}
		got, err := directio.Copy(f, bytes.NewReader(want))
		if err != nil || got != int64(n) {
			t.Fatalf("Copy %d bytes: wrote %d, %v", n, got, err)
		}
		f.Close()
		if data, _ := os.ReadFile(path); !bytes.Equal(data, want) {
			t.Fatalf("Copy %d bytes: file holds %d different bytes", n, len(data))
		}
	}
}

func TestWriteAtAlignedUnalignedAndTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	buffered, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer buffered.Close()
	direct, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	if err := directio.Enable(direct); err != nil {
		direct = nil // still correct through the buffered file
	}
	want := make([]byte, 2*directio.BufSize+100)
	rand.Read(want)
	aligned := directio.Alloc(directio.BufSize)
	copy(aligned, want)
	unaligned := make([]byte, directio.BufSize+1)[1:]
	copy(unaligned, want[directio.BufSize:])
	for _, w := range []struct {
		p   []byte
		off int64
	}{{want[2*directio.BufSize:], 2 * directio.BufSize}, {unaligned, directio.BufSize}, {aligned, 0}} {
		if err := directio.WriteAt(direct, buffered, w.p, w.off); err != nil {
			t.Fatalf("WriteAt %d bytes at %d: %v", len(w.p), w.off, err)
		}
	}
	if data, _ := os.ReadFile(path); !bytes.Equal(data, want) {
		t.Fatal("the file is not what was written")
	}
}
