//go:build !linux && !darwin

package directio

import (
	"errors"
	"os"
)

func enable(*os.File) error  { return errors.ErrUnsupported }
func disable(*os.File) error { return nil }

func readCached(*os.File, []byte, int64) (int, bool) { return 0, false }
