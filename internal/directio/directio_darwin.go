package directio

import (
	"os"

	"golang.org/x/sys/unix"
)

// enable sets F_NOCACHE: transfers skip the unified buffer cache where they
// are aligned, and are not kept in it where they are not.
func enable(f *os.File) error {
	_, err := unix.FcntlInt(f.Fd(), unix.F_NOCACHE, 1)
	return err
}

func disable(*os.File) error { return nil } // F_NOCACHE has no alignment rules

// readCached leaves every read to the F_NOCACHE descriptor, which is served
// from the cache where the data is there.
func readCached(*os.File, []byte, int64) (int, bool) { return 0, false }
