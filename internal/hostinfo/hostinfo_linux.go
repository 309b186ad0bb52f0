package hostinfo

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// meminfo returns /proc/meminfo's fields in kB.
func meminfo() map[string]float64 {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return nil
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, _ := strings.Cut(line, ":")
		if n, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64); err == nil {
			out[k] = n
		}
	}
	return out
}

// MemoryMB is the host's RAM, 0 when unknown.
func MemoryMB() int { return int(meminfo()["MemTotal"] / 1024) }

// RAMUsed is the fraction of RAM in use (1 - MemAvailable/MemTotal).
func RAMUsed() (float64, bool) {
	m := meminfo()
	if m["MemTotal"] <= 0 {
		return 0, false
	}
	return 1 - m["MemAvailable"]/m["MemTotal"], true
}

// CPUTimes returns the busy and total time of all CPUs so far (jiffies,
// /proc/stat); the use over an interval is the ratio of two readings' deltas.
func CPUTimes() (busy, total uint64, ok bool) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, false
	}
	line, _, _ := strings.Cut(string(data), "\n")
	fields := strings.Fields(line)
	if len(fields) < 5 || fields[0] != "cpu" {
		return 0, 0, false
	}
	for i, f := range fields[1:] {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return 0, 0, false
		}
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total, true
}

// SyncFS makes everything written to the filesystem holding dir durable
// (syncfs: far cheaper than one fsync per file).
func SyncFS(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := unix.Syncfs(int(d.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", dir, err)
	}
	return nil
}

// StartWriteback asks the kernel to start writing f's dirty pages to disk
// now, without waiting: a later fsync or syncfs then finds little left, and
// the disk works while the transfer still runs. Best effort.
func StartWriteback(f *os.File) {
	_ = unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
}
