package hostinfo

import (
	"os"
	"testing"
)

func TestReadings(t *testing.T) {
	if MemoryMB() <= 0 {
		t.Error("no memory size")
	}
	if u, ok := RAMUsed(); !ok || u <= 0 || u >= 1 {
		t.Errorf("RAM use %v %v", u, ok)
	}
	if b, tot, ok := CPUTimes(); !ok || tot == 0 || b > tot {
		t.Errorf("cpu %d/%d %v", b, tot, ok)
	}
	total, free, err := DiskUsage(os.TempDir())
	if err != nil || total <= 0 || free < 0 || free > total {
		t.Errorf("disk %d/%d %v", free, total, err)
	}
	if err := SyncFS(t.TempDir()); err != nil {
		t.Error(err)
	}
}
