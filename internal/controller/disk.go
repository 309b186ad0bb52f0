package controller

import (
	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/hostinfo"
)

func diskUsage(dir string) (apiv1.Disk, error) {
	total, free, err := hostinfo.DiskUsage(dir)
	if err != nil {
		return apiv1.Disk{}, err
	}
	return apiv1.Disk{Total: total, Free: free}, nil
}
