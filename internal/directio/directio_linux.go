package directio

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

func setFlag(f *os.File, on bool) error {
	fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	if err != nil {
		return err
	}
	if on {
		fl |= unix.O_DIRECT
	} else {
		fl &^= unix.O_DIRECT
	}
	_, err = unix.FcntlInt(f.Fd(), unix.F_SETFL, fl)
	return err
}

func enable(f *os.File) error { return setFlag(f, true) }

// disable clears O_DIRECT: later transfers may be unaligned.
func disable(f *os.File) error { return setFlag(f, false) }

// readCached reads p at off from f if every page of it is in the page
// cache (mincore on a mapping that is never touched; a read with
// RWF_NOWAIT would start readahead of what is missing, filling the cache).
func readCached(f *os.File, p []byte, off int64) (int, bool) {
	if len(p) == 0 || off%int64(os.Getpagesize()) != 0 {
		return 0, false
	}
	if resident, pages, err := Resident(f, off, len(p)); err != nil || resident < pages {
		return 0, false
	}
	n, err := f.ReadAt(p, off)
	return n, err == nil
}

// Resident counts the pages of f's n bytes at off (a page boundary) that
// are in the page cache, and the pages in all (mincore on a mapping that
// is never touched, so nothing is read in).
func Resident(f *os.File, off int64, n int) (resident, pages int, err error) {
	if n == 0 {
		return 0, 0, nil
	}
	m, err := unix.Mmap(int(f.Fd()), off, n, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return 0, 0, err
	}
	defer unix.Munmap(m)
	vec := make([]byte, (n+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(unsafe.SliceData(m))), uintptr(len(m)), uintptr(unsafe.Pointer(unsafe.SliceData(vec)))); errno != 0 {
		return 0, 0, errno
	}
	for _, v := range vec {
		resident += int(v & 1)
	}
	return resident, len(vec), nil
}
