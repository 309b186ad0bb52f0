package hostinfo

import (
	"fmt"
	"os"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// MemoryMB is the host's RAM (sysctl hw.memsize), 0 when unknown.
func MemoryMB() int {
	n, err := unix.SysctlUint64("hw.memsize")
	if err != nil {
		return 0
	}
	return int(n >> 20)
}

// RAMUsed is the fraction of RAM not free or speculative (sysctl
// vm.page_free_count and vm.page_speculative_count, as vm_stat reports them).
func RAMUsed() (float64, bool) {
	total, err := unix.SysctlUint64("hw.memsize")
	if err != nil || total == 0 {
		return 0, false
	}
	page, err1 := unix.SysctlUint32("hw.pagesize")
	free, err2 := unix.SysctlUint32("vm.page_free_count")
	spec, err3 := unix.SysctlUint32("vm.page_speculative_count")
	if err1 != nil || err2 != nil || err3 != nil {
		return 0, false
	}
	avail := float64(uint64(free)+uint64(spec)) * float64(page)
	return max(0, 1-avail/float64(total)), true
}

// CPUTimes approximates busy/total from the 1-minute load average
// (vm.loadavg) over the CPU count: per-CPU tick counters need the Mach API
// (cgo), which this build does not use. busy/total is the use; callers that
// take deltas of two readings get the change of that ratio, so this returns
// a reading already normalised to a growing total.
func CPUTimes() (busy, total uint64, ok bool) {
	raw, err := unix.SysctlRaw("vm.loadavg")
	if err != nil || len(raw) < 8 {
		return 0, 0, false
	}
	// struct loadavg { fixpt_t ldavg[3]; long fscale; }
	ld := uint64(raw[0]) | uint64(raw[1])<<8 | uint64(raw[2])<<16 | uint64(raw[3])<<24
	fscale := uint64(1 << 11)
	if len(raw) >= 24 {
		fscale = uint64(raw[16]) | uint64(raw[17])<<8 | uint64(raw[18])<<16 | uint64(raw[19])<<24
	}
	use := min(float64(ld)/float64(fscale)/float64(runtime.NumCPU()), 1)
	return tick.add(use)
}

// tick turns instantaneous use readings into growing busy/total counters.
var tick counter

type counter struct {
	mu          sync.Mutex
	busy, total uint64
}

func (c *counter) add(use float64) (uint64, uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total += 1000
	c.busy += uint64(use * 1000)
	return c.busy, c.total, true
}

// SyncFS makes what was written under dir durable: sync(2) flushes every
// filesystem's buffers, and F_FULLFSYNC asks the drive to empty its cache
// (macOS's fsync does not).
func SyncFS(dir string) error {
	unix.Sync()
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if _, err := unix.FcntlInt(d.Fd(), unix.F_FULLFSYNC, 0); err != nil {
		return fmt.Errorf("F_FULLFSYNC %s: %w", dir, err)
	}
	return nil
}

// StartWriteback is a no-op on macOS (no sync_file_range); the later
// fsync writes everything.
func StartWriteback(*os.File) {}
