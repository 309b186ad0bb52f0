package e2e

import (
	"os"
	"runtime"
	"syscall"
	"testing"
)

type syscallStat = syscall.Stat_t

// allocated returns the bytes a file really occupies on disk.
func allocated(t *testing.T, path string, st *syscall.Stat_t) int64 {
	t.Helper()
	if err := syscall.Stat(path, st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func runtimeArch() string { return runtime.GOARCH }

func readFile(t *testing.T, path string) ([]byte, error) {
	t.Helper()
	return os.ReadFile(path)
}
