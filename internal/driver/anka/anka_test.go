package anka

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/driver"
)

// fakeAnka records every command line and answers like the anka CLI's
// --machine-readable mode, keeping VM state in files.
const fakeAnka = `#!/bin/sh
echo "$*" >> "$FAKE_ANKA_LOG"
state="$FAKE_ANKA_STATE"
ok() { echo '{"status":"OK","message":"","body":'"${1:-{\}}"'}'; }
fail() { echo '{"status":"FAIL","message":"'"$1"'"}'; exit 1; }
if [ "$1" = run ]; then shift 2; exec "$@"; fi
[ "$1" = --machine-readable ] && shift
cmd=$1; shift
case $cmd in
show)
	[ -f "$state/$1" ] || fail "VM $1 not found"
	ok '{"uuid":"uuid-'"$1"'","name":"'"$1"'","status":"'"$(cat "$state/$1")"'","cpu_cores":4,"ram":"8G","ip":"192.168.64.5","vnc_port":5901,"vnc_connection_string":"vnc://:admin@192.168.64.5:5901","port_forwarding":[{"guest_port":8080,"host_port":18080,"protocol":"tcp","name":"web"},{"guest_port":22,"host_port":10022,"protocol":"tcp","name":"ssh"}]}' ;;
import) [ -f "$1" ] || fail "no bundle $1"; echo stopped > "$state/$3"; ok ;;
clone) [ -f "$state/$1" ] || fail "no VM $1"; echo stopped > "$state/$2"; ok ;;
modify) ok ;;
start) echo running > "$state/$1"; ok ;;
stop) echo stopped > "$state/$2"; ok ;;
delete) rm -f "$state/$2"; ok ;;
*) fail "unknown command $cmd" ;;
esac
`

func setup(t *testing.T) (*Driver, string, string) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "anka")
	if err := os.WriteFile(bin, []byte(fakeAnka), 0o755); err != nil {
		t.Fatal(err)
	}
	log, state := filepath.Join(dir, "log"), filepath.Join(dir, "state")
	os.Mkdir(state, 0o755)
	t.Setenv("FAKE_ANKA_LOG", log)
	t.Setenv("FAKE_ANKA_STATE", state)
	d, err := New(Config{Binary: bin, PollInterval: 100 * time.Millisecond, BootTimeout: 5 * time.Second,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return d, log, state
}

func commands(t *testing.T, log string) []string {
	data, _ := os.ReadFile(log)
	return strings.Split(strings.TrimSpace(string(data)), "\n")
}

func TestLifecycleCommandLines(t *testing.T) {
	d, log, _ := setup(t)
	tmplDir := t.TempDir()
	os.WriteFile(filepath.Join(tmplDir, "config.json"), []byte(`{}`), 0o644)
	os.WriteFile(filepath.Join(tmplDir, "macos.ankabundle"), []byte("bundle"), 0o644)
	ctx := context.Background()
	spec := driver.Spec{InstanceID: "i1", VMID: "t1", Tag: "v1", TemplateDir: tmplDir, VCPU: 6, VRAMMB: 8192, HostIP: "10.1.1.1", NodeID: "n1"}
	m, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	info := m.Info()
	if info.IP != "192.168.64.5" || info.PortForwarding[0].GuestPort != 22 || info.PortForwarding[0].HostPort != 10022 ||
		info.VNCPort != 5901 || info.HostIP != "10.1.1.1" || info.Status != "running" {
		t.Fatalf("vminfo %+v", info)
	}
	res, err := m.RunScript(ctx, []byte("echo hi; exit 3"))
	if err != nil || res.Stdout != "hi\n" || res.ReturnCode != 3 {
		t.Fatalf("script %+v %v", res, err)
	}
	// A second instance of the same template reuses the import.
	m2, err := d.Start(ctx, driver.Spec{InstanceID: "i2", VMID: "t1", Tag: "v1", TemplateDir: tmplDir})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	m2.Destroy(ctx)
	want := []string{
		"--machine-readable show corral-t1-v1",
		"--machine-readable import " + filepath.Join(tmplDir, "macos.ankabundle") + " --name corral-t1-v1",
		"--machine-readable clone corral-t1-v1 corral-i1",
		"--machine-readable modify corral-i1 cpu 6",
		"--machine-readable modify corral-i1 ram 8192M",
		"--machine-readable modify corral-i1 port --guest-port 22 ssh",
		"--machine-readable start corral-i1",
		"--machine-readable show corral-i1",
		"run corral-i1 /bin/sh -s",
		"--machine-readable show corral-t1-v1",
		"--machine-readable clone corral-t1-v1 corral-i2",
		"--machine-readable modify corral-i2 port --guest-port 22 ssh",
		"--machine-readable start corral-i2",
		"--machine-readable show corral-i2",
		"--machine-readable stop --force corral-i1",
		"--machine-readable delete --yes corral-i1",
		"--machine-readable stop --force corral-i2",
		"--machine-readable delete --yes corral-i2",
	}
	var got []string
	for _, c := range commands(t, log) {
		if !strings.HasPrefix(c, "--machine-readable show corral-i") || !contains(got, c) {
			got = append(got, c) // the watcher's periodic shows vary in number
		}
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("command lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestVMStoppingOnItsOwnIsReported(t *testing.T) {
	d, _, state := setup(t)
	tmplDir := t.TempDir()
	os.WriteFile(filepath.Join(tmplDir, "disk.img"), []byte("x"), 0o644)
	m, err := d.Start(context.Background(), driver.Spec{InstanceID: "i9", VMID: "t", Tag: "v", TemplateDir: tmplDir})
	if err != nil {
		t.Fatal(err)
	}
	// Atomically: the watcher's show must never read a half-written state
	// (an empty one made this test flaky).
	tmp := filepath.Join(state, ".corral-i9.tmp")
	os.WriteFile(tmp, []byte("stopped\n"), 0o644)
	if err := os.Rename(tmp, filepath.Join(state, "corral-i9")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Done():
	case <-time.After(3 * time.Second):
		t.Fatal("VM stopping on its own not reported")
	}
	if err := m.Err(); err == nil || !strings.Contains(err.Error(), "is stopped") {
		t.Fatalf("reason %v", err)
	}
}

func TestMissingCLI(t *testing.T) {
	if _, err := New(Config{Binary: "/nonexistent/anka"}); err == nil || !strings.Contains(err.Error(), "macOS") {
		t.Fatalf("got %v", err)
	}
}
