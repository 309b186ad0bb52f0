// Package hostinfo reads the host's figures a node and the registry report:
// disk space, memory, CPU use, and a whole-filesystem sync. Each OS has its
// own implementation (/proc on Linux, sysctl on macOS).
package hostinfo

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// DiskUsage returns the size and the space available to unprivileged users
// of the filesystem holding dir.
func DiskUsage(dir string) (total, free int64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	// Field types differ by OS (Bsize is int64 on Linux, uint32 on macOS).
	return int64(st.Blocks) * int64(st.Bsize), int64(st.Bavail) * int64(st.Bsize), nil
}
