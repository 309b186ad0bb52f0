package node

import (
	"fmt"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/hostinfo"
)

// describe fills the node's report from the machine.
func (a *Agent) describe() error {
	id := a.cfg.NodeID
	if id == "" {
		var err error
		if id, err = persistentID(a.cfg.DataDir); err != nil {
			return err
		}
	}
	name := a.cfg.Name
	if name == "" {
		name, _ = os.Hostname()
	}
	ip := a.cfg.IP
	if ip == "" {
		ip = routeTo(a.cfg.ControllerURLs[0])
	}
	capacity := a.cfg.Capacity
	if capacity <= 0 {
		capacity = 2
	}
	total, free := diskSpace(a.cfg.DataDir)
	a.report = apiv1.NodeReport{
		NodeID: id, NodeName: name, IPAddress: ip, HostArch: runtime.GOARCH, CPUCount: runtime.NumCPU(),
		RAMMB: memoryMB(), DiskSize: total, FreeDiskSpace: free, Capacity: capacity,
		Driver: a.cfg.Driver.Name(), AgentVersion: apiv1.Version, Groups: a.cfg.Groups, Templates: []apiv1.NodeTemplate{},
	}
	return nil
}

// persistentID keeps the node's identity across restarts in dataDir.
func persistentID(dataDir string) (string, error) {
	if dataDir == "" {
		return apiv1.NewID(), nil
	}
	path := filepath.Join(dataDir, "node-id")
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b)), nil
	}
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return "", fmt.Errorf("node data dir: %w", err)
	}
	id := apiv1.NewID()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("save node id: %w", err)
	}
	return id, os.Rename(tmp, path)
}

// routeTo returns the local address used to reach the controller.
func routeTo(controllerURL string) string {
	u, err := url.Parse(controllerURL)
	if err != nil {
		return "127.0.0.1"
	}
	host := u.Hostname()
	port := u.Port()
	if port == "" {
		port = "80"
	}
	c, err := net.Dial("udp", net.JoinHostPort(host, port))
	if err != nil {
		return "127.0.0.1"
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP.String()
}

func diskSpace(dir string) (total, free int64) {
	if dir == "" {
		dir = os.TempDir()
	}
	total, free, err := hostinfo.DiskUsage(dir)
	if err != nil {
		return 0, 0
	}
	return total, free
}

func memoryMB() int { return hostinfo.MemoryMB() }

// measure refreshes the report's changing figures: free disk, CPU and RAM
// use, and what the template cache holds.
func (a *Agent) measure(r *apiv1.NodeReport) {
	r.DiskSize, r.FreeDiskSpace = diskSpace(a.cfg.DataDir)
	if busy, total, ok := cpuTimes(); ok {
		if d := total - a.cpuPrev[1]; a.cpuPrev[1] > 0 && d > 0 {
			r.CPUUtil = math.Round(float64(busy-a.cpuPrev[0])/float64(d)*1000) / 1000
		}
		a.cpuPrev = [2]uint64{busy, total}
	}
	if used, ok := ramUsed(); ok {
		r.RAMUtil = math.Round(used*1000) / 1000
	}
	if du, ok := a.cfg.Templates.(interface{ DiskUsage() int64 }); ok {
		r.TemplateDiskUsage = du.DiskUsage()
	}
}

func cpuTimes() (busy, total uint64, ok bool) { return hostinfo.CPUTimes() }

func ramUsed() (float64, bool) { return hostinfo.RAMUsed() }

// allocated is the disk space a file takes (its blocks), or its size where
// the platform does not say.
func allocated(info os.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return int64(st.Blocks) * 512
	}
	return info.Size()
}
