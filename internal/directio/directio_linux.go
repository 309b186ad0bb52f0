package directio

import (
	"os"

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
