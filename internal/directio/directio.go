// Package directio writes (and reads) files around the page cache.
//
// A registry stores, and a node pulls, multi-GB images that nobody reads
// back soon: sent through the page cache they evict what is hot and, on
// many hosts, cost more kernel time in page allocation than the copy itself
// (on this project's VMs about 1.8 s per GiB of never-touched pages, against
// 0.1 s with O_DIRECT). On Linux the file is opened with O_DIRECT, so every
// transfer must use aligned buffers, offsets and lengths (Align); the
// unaligned tail of a file is written after switching the descriptor back to
// buffered I/O. On macOS F_NOCACHE asks the same without alignment rules.
// Where the filesystem refuses (tmpfs, some network filesystems) Enable fails
// and callers use an ordinary file.
package directio

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// Align is the alignment of direct transfers: the largest logical block size
// in use (4 KiB sectors), a multiple of every smaller one.
const Align = 4096

// BufSize is the size of the buffers Copy writes through.
const BufSize = 1 << 20

// Alloc returns n bytes starting at an Align boundary.
func Alloc(n int) []byte {
	b := make([]byte, n+Align)
	skip := 0
	if r := int(uintptr(unsafe.Pointer(unsafe.SliceData(b))) % Align); r != 0 {
		skip = Align - r
	}
	return b[skip : skip+n : skip+n]
}

// IsAligned reports whether p may be transferred directly at off.
func IsAligned(p []byte, off int64) bool {
	return len(p)%Align == 0 && off%Align == 0 && uintptr(unsafe.Pointer(unsafe.SliceData(p)))%Align == 0
}

var bufs = sync.Pool{New: func() any { b := Alloc(BufSize); return &b }}

// Enable switches f to direct I/O. It fails where the platform or the
// filesystem has none; f is then unchanged.
func Enable(f *os.File) error {
	if err := enable(f); err != nil {
		return fmt.Errorf("direct I/O on %s: %w", f.Name(), err)
	}
	return nil
}

// Open opens path with flag for direct I/O, or returns nil where the
// platform or filesystem has none (callers then use their ordinary file).
func Open(path string, flag int) *os.File {
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil
	}
	if Enable(f) != nil {
		f.Close()
		return nil
	}
	return f
}

// depth is how many buffers Copy keeps between reading and writing: a
// direct write returns when the device has the data, so reads (from the
// network, the hash) go on while up to depth-1 buffers are written.
const depth = 4

// Copy writes everything r yields to f, switched by Enable, at an aligned
// offset, and returns the bytes written. Whole buffers go directly, written
// on a goroutine of their own while the next ones are read; the unaligned
// tail is written after f is switched to buffered I/O.
func Copy(f *os.File, r io.Reader) (int64, error) {
	full := make(chan block, depth)
	free := make(chan *[]byte, depth)
	for range depth {
		free <- bufs.Get().(*[]byte)
	}
	var failed atomic.Bool
	type result struct {
		n   int64
		err error
	}
	done := make(chan result, 1)
	go func() {
		var res result
		for b := range full {
			if res.err == nil {
				var n int
				n, res.err = writeBlock(f, (*b.buf)[:b.n])
				res.n += int64(n)
				failed.Store(res.err != nil)
			}
			free <- b.buf
		}
		done <- res
	}()
	var rerr error
	for !failed.Load() {
		bp := <-free
		n, err := io.ReadFull(r, *bp)
		if n > 0 {
			full <- block{bp, n}
		} else {
			free <- bp
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				rerr = err
			}
			break
		}
	}
	close(full)
	res := <-done
	for range depth {
		bufs.Put(<-free)
	}
	return res.n, cmp.Or(res.err, rerr)
}

type block struct {
	buf *[]byte
	n   int
}

// writeBlock writes p's aligned part directly, then the rest buffered. A
// device whose direct transfers need a larger alignment refuses the first
// (EINVAL): f is then switched to buffered I/O for good.
func writeBlock(f *os.File, p []byte) (int, error) {
	aligned := len(p) &^ (Align - 1)
	if aligned > 0 {
		n, err := f.Write(p[:aligned])
		if n == 0 && errors.Is(err, syscall.EINVAL) {
			if derr := disable(f); derr != nil {
				return 0, err
			}
			n, err = f.Write(p[:aligned])
		}
		if err != nil {
			return n, err
		}
	}
	if aligned == len(p) {
		return aligned, nil
	}
	if err := disable(f); err != nil {
		return aligned, fmt.Errorf("direct I/O off: %w", err)
	}
	n, err := f.Write(p[aligned:])
	return aligned + n, err
}

// WriteAt writes p at off through direct when the transfer can be direct
// (p copied to an aligned buffer if it is not one), else through buffered:
// the same file opened without direct I/O, for unaligned tails. direct may
// be nil.
func WriteAt(direct, buffered *os.File, p []byte, off int64) error {
	if direct == nil || len(p)%Align != 0 || off%Align != 0 {
		_, err := buffered.WriteAt(p, off)
		return err
	}
	var err error
	if !IsAligned(p, off) {
		bp := bufs.Get().(*[]byte)
		defer bufs.Put(bp)
		for q, at := p, off; len(q) > 0 && err == nil; {
			n := copy(*bp, q)
			_, err = direct.WriteAt((*bp)[:n], at)
			q, at = q[n:], at+int64(n)
		}
	} else {
		_, err = direct.WriteAt(p, off)
	}
	if errors.Is(err, syscall.EINVAL) { // the device wants a larger alignment
		_, err = buffered.WriteAt(p, off)
	}
	return err
}

// ReadAt reads len(p) bytes at off like buffered.ReadAt, taking them from
// the page cache where they all are and otherwise reading directly (p
// aligned; cap(p) at least len(p) rounded up to Align for a short tail at
// the end of the file), so a cold multi-GB file is read without filling
// the cache. direct may be nil.
func ReadAt(direct, buffered *os.File, p []byte, off int64) (int, error) {
	whole := (len(p) + Align - 1) &^ (Align - 1)
	if direct == nil || cap(p) < whole || !IsAligned(p[:whole], off) {
		return buffered.ReadAt(p, off)
	}
	if n, ok := readCached(buffered, p, off); ok {
		return n, nil
	}
	n, err := direct.ReadAt(p[:whole], off)
	if n == 0 && errors.Is(err, syscall.EINVAL) { // the device wants a larger alignment
		return buffered.ReadAt(p, off)
	}
	if n >= len(p) {
		return len(p), nil
	}
	if err == nil {
		err = io.EOF
	}
	return n, err
}
