package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/testenv"
)

// TestTemplateEvictionOnFullDisk: a node whose template cache (a real 64 MiB
// tmpfs) cannot hold a second template deletes the least recently used one
// no instance uses; when the only candidate is in use, the pull fails with a
// reason instead of filling the disk.
func TestTemplateEvictionOnFullDisk(t *testing.T) {
	dataDir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", dataDir).CombinedOutput(); err != nil {
		t.Skipf("needs root to mount a tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dataDir).Run() })
	c := testenv.StartCluster(t, testenv.Options{Registry: true})
	c.StartNode(testenv.NodeOptions{Name: "small", Capacity: 4, DataDir: dataDir, MinFreeDisk: 8 << 20})
	rc, _ := client.NewRegistry(c.Registry.URL)
	ctx := context.Background()
	push := func(name string, seed int64) string {
		src := newVMDir(t, allMiB(30)...) // 30 MiB of random data
		makeChanged(t, filepath.Join(src, "disk.img"), seed)
		res, err := rc.Push(ctx, client.PushOptions{Source: src, Template: name, Tag: "v1", Arch: runtimeArch()})
		if err != nil {
			t.Fatal(err)
		}
		return res.TemplateID
	}
	a, b := push("a", 1), push("b", 2)
	start := func(vmid string) apiv1.Instance {
		t.Helper()
		ids, err := c.Client.StartInstances(ctx, map[string]any{"vmid": vmid})
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			in, _ := c.Client.Instance(ctx, ids[0])
			if in.State == apiv1.StateStarted || in.State == apiv1.StateError {
				return in
			}
			if time.Now().After(deadline) {
				t.Fatalf("instance of %s still %s: %s", vmid, in.State, in.Message)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	held := func() []string {
		dirs, _ := filepath.Glob(filepath.Join(dataDir, "templates", "*"))
		for i, d := range dirs {
			dirs[i] = filepath.Base(d)
		}
		return dirs
	}

	inA := start(a)
	if inA.State != apiv1.StateStarted {
		t.Fatalf("first template: %+v", inA)
	}
	// While a's instance runs, b does not fit: its pull fails with a reason.
	inB := start(b)
	if inB.State != apiv1.StateError || !strings.Contains(inB.Message, "not enough disk") {
		t.Fatalf("b while a is in use: %s %q", inB.State, inB.Message)
	}
	c.Client.Terminate(ctx, inB.InstanceID)
	c.Client.Terminate(ctx, inA.InstanceID)
	c.WaitState(inA.InstanceID, apiv1.StateTerminated, 10*time.Second)

	// a is unused now: b's pull deletes it and fits.
	if inB = start(b); inB.State != apiv1.StateStarted {
		t.Fatalf("b after a ended: %s %q", inB.State, inB.Message)
	}
	if got := held(); len(got) != 1 || got[0] != b {
		t.Fatalf("templates on the node: %v, want only %s", got, b)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "templates", a)); !os.IsNotExist(err) {
		t.Fatal("evicted template still on disk")
	}
}
