package directio

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
)

// A direct transfer the device refuses (EINVAL: here a buffer off its
// alignment, on a device wanting more than Align the same answer) is done
// buffered instead of failing the copy.
func TestRefusedDirectTransferFallsBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := Enable(f); err != nil {
		t.Skipf("no direct I/O here: %v", err)
	}
	buf := Alloc(2*Align + 1)[1:] // Align-multiple length, misaligned address
	rand.Read(buf)
	if n, err := writeBlock(f, buf); err != nil || n != len(buf) {
		t.Fatalf("writeBlock: %d, %v", n, err)
	}
	direct, _ := os.OpenFile(path, os.O_RDWR, 0)
	defer direct.Close()
	if err := Enable(direct); err != nil {
		t.Fatal(err)
	}
	if _, err := direct.WriteAt(buf[:Align], 0); err == nil {
		t.Skip("this device takes misaligned direct writes: nothing to fall back from")
	}
	if err := WriteAt(direct, f, buf, 2*Align); err != nil { // passes IsAligned's copy...
		t.Fatal(err)
	}
	got := make([]byte, len(buf))
	if n, err := ReadAt(direct, f, got, 2*Align); n != len(got) || err != nil || !bytes.Equal(got, buf) {
		t.Fatalf("ReadAt: %d, %v", n, err)
	}
	data, _ := os.ReadFile(path)
	if !bytes.Equal(data[:len(buf)], buf) || !bytes.Equal(data[2*Align:], buf) {
		t.Fatal("the file is not what was written")
	}
}
