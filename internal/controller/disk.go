package controller

import (
	"fmt"
	"syscall"

	apiv1 "github.com/corral-build/corral/api/v1"
)

func diskUsage(dir string) (apiv1.Disk, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return apiv1.Disk{}, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return apiv1.Disk{Total: int64(st.Blocks) * st.Bsize, Free: int64(st.Bavail) * st.Bsize}, nil
}
