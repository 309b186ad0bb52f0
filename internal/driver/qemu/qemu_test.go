package qemu

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/driver"
	"github.com/corral-build/corral/internal/driver/drivertest"
	"github.com/corral-build/corral/internal/driver/qemu/qemutest"
)

func newTestDriver(t *testing.T) *Driver {
	d, err := New(Config{StateDir: t.TempDir(), ForwardHost: "127.0.0.1", VNC: true,
		BootTimeout: 2 * time.Minute, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestBootRunScriptDestroy boots a real guest (TCG here), runs startup scripts
// over SSH, checks the disk is a copy-on-write overlay, and destroys it.
func TestBootRunScriptDestroy(t *testing.T) {
	img := qemutest.Image(t)
	d := newTestDriver(t)
	ctx := context.Background()
	start := time.Now()
	m, err := d.Start(ctx, driver.Spec{InstanceID: "inst-1", TemplateDir: img, HostIP: "127.0.0.1", NodeID: "n1", VRAMMB: 256})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest answered SSH after %s", time.Since(start).Round(time.Millisecond))
	info := m.Info()
	ssh := info.PortForwarding[0]
	if info.Status != "running" || info.IP != "10.0.2.15" || ssh.GuestPort != 22 || info.Accelerator != d.Accelerator() ||
		info.VNCPort < 5900 || info.RAM != "256M" {
		t.Fatalf("vminfo %+v", info)
	}
	res, err := m.RunScript(ctx, []byte("head -c 20 /dev/vda; echo; echo to-stderr >&2; exit 3"))
	if err != nil || res.Stdout != "corral-template-disk\n" || res.Stderr != "to-stderr\n" || res.ReturnCode != 3 {
		t.Fatalf("script %+v %v", res, err)
	}
	// Writes land in the instance's overlay, never in the template.
	if res, err := m.RunScript(ctx, []byte("printf overwritten > /dev/vda && sync && head -c 11 /dev/vda")); err != nil || res.Stdout != "overwritten" {
		t.Fatalf("write in guest: %+v %v", res, err)
	}
	base, _ := os.ReadFile(filepath.Join(img, "disk.raw"))
	if !strings.HasPrefix(string(base), "corral-template-disk") {
		t.Fatal("the guest's write reached the template disk")
	}
	overlay, err := os.Stat(filepath.Join(d.cfg.StateDir, "instances", "inst-1", "disk.qcow2"))
	if err != nil || overlay.Size() > 4<<20 {
		t.Fatalf("overlay %v %v", overlay, err)
	}
	tctx, cancel := context.WithTimeout(ctx, time.Second)
	res, err = m.RunScript(tctx, []byte("sleep 30"))
	cancel()
	if err != nil || !res.DidTimeout {
		t.Fatalf("timeout: %+v %v", res, err)
	}
	if err := m.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(d.cfg.StateDir, "instances", "inst-1")); !os.IsNotExist(err) {
		t.Fatal("instance state left after destroy")
	}
	if c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(ssh.HostPort)), time.Second); err == nil {
		c.Close()
		t.Fatal("SSH forward still open after destroy")
	}
	select {
	case <-m.Done():
		t.Fatal("a requested stop was reported as a crash")
	default:
	}
}

// TestGuestDeathIsReported: a guest that dies on its own closes Done with a reason.
func TestGuestDeathIsReported(t *testing.T) {
	img := qemutest.Image(t)
	d := newTestDriver(t)
	m, err := d.Start(context.Background(), driver.Spec{InstanceID: "inst-2", TemplateDir: img, HostIP: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Destroy(context.Background())
	if err := m.(*vm).cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("guest death not reported within 5s")
	}
	if err := m.Err(); err == nil || !strings.Contains(err.Error(), "qemu exited") {
		t.Fatalf("reason %v", err)
	}
	if m.Info().Status != "stopped" {
		t.Fatalf("status %s", m.Info().Status)
	}
}

func TestBadTemplate(t *testing.T) {
	qemutest.Require(t)
	d := newTestDriver(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"kernel":"../../etc/passwd"}`), 0o644)
	if _, err := d.Start(context.Background(), driver.Spec{InstanceID: "x", TemplateDir: dir}); err == nil ||
		!strings.Contains(err.Error(), "must be a file name in the template") {
		t.Fatalf("got %v", err)
	}
}

func requireQEMU(t *testing.T) { qemutest.Require(t) }

// TestConformance boots real guests (TCG here) through the shared suite.
func TestConformance(t *testing.T) {
	img := qemutest.Image(t)
	state := t.TempDir()
	drivertest.Run(t, drivertest.Setup{
		New: func(t *testing.T) driver.Driver {
			d, err := New(Config{StateDir: state, ForwardHost: "127.0.0.1", BootTimeout: 3 * time.Minute,
				Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				t.Fatal(err)
			}
			return d
		},
		Spec: func(t *testing.T, id string) driver.Spec {
			return driver.Spec{InstanceID: id, TemplateDir: img, HostIP: "127.0.0.1", VRAMMB: 256}
		},
		Saved: func(t *testing.T, id, dir, _, _ string) driver.Spec {
			return driver.Spec{InstanceID: id, TemplateDir: dir, HostIP: "127.0.0.1", VRAMMB: 256}
		},
		Timeout: 3 * time.Minute,
	})
}
