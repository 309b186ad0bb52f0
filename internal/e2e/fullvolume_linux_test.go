package e2e

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/corral-build/corral/client"
	regdaemon "github.com/corral-build/corral/internal/registry/daemon"
	"github.com/corral-build/corral/internal/testenv"
)

// TestPushIntoAFullVolume: a push into a full registry volume answered
// "internal error" (5xx) with the server's store path; the low-space GC
// (under 5% free) never fired although pushes failed at 25% free, and the
// aborted push's data stayed until the next GC interval plus its grace
// (up to 2 h). Now: 507 saying what is free and never where, and GC at
// once, which gives the aborted push's space back.
func TestPushIntoAFullVolume(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root (CI runs as root)")
	}
	vol := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=48m", "corral-full-test", vol).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = syscall.Unmount(vol, syscall.MNT_DETACH) })
	store := filepath.Join(vol, "store")
	reg, err := regdaemon.Start(regdaemon.Config{DataDir: store, ListenAddr: "127.0.0.1:0", Log: testenv.Logger(t),
		GCInterval: time.Hour, LowSpaceCheck: 200 * time.Millisecond, LowSpace: 1, LowSpaceGrace: time.Millisecond, GCGrace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	freeBytes := func() int64 {
		var st syscall.Statfs_t
		if err := syscall.Statfs(vol, &st); err != nil {
			t.Fatal(err)
		}
		return int64(st.Bavail) * st.Bsize
	}
	before := freeBytes()
	rc, _ := client.NewRegistry(reg.URL)
	src := newVMDir(t, allMiB(80)...) // 80 MiB of random data into 48 MiB
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, err = rc.Push(ctx, client.PushOptions{Source: src, Template: "too-big", Tag: "v1"})
	if err == nil {
		t.Fatal("a push larger than the volume succeeded")
	}
	var fe *client.FailError
	if !errors.As(err, &fe) || fe.HTTPStatus != http.StatusInsufficientStorage || !strings.Contains(fe.Message, "bytes free") ||
		strings.Contains(err.Error(), vol) {
		t.Fatalf("push into a full volume: %v (want HTTP 507 saying what is free, never the path)", err)
	}
	// The refused write started GC; with its grace over, the aborted
	// push's chunks go and the space comes back.
	deadline := time.Now().Add(time.Minute)
	for {
		if free := freeBytes(); free >= before-before/10 {
			break
		}
		if time.Now().After(deadline) {
			resp, _ := http.Get(reg.URL + "/metrics")
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			gc := ""
			for _, l := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(l, "corral_registry_gc") {
					gc += l + "\n"
				}
			}
			t.Fatalf("free %d bytes a minute after the refused push, %d before it; GC:\n%s", freeBytes(), before, gc)
		}
		time.Sleep(200 * time.Millisecond) // polling the volume
	}
}
