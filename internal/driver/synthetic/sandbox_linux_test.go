package synthetic

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/corral-build/corral/internal/driver"
)

// TestJobsCannotLeaveTheirVM: with the node as root, a job tried every way
// out that took a start-only API key to admin: the host's loopback (the
// embedded etcd, the controller), other processes' command lines in /proc
// (the root token), the node's data dir (its credential), other VMs'
// files; two jobs on two VMs shared /tmp; a job's background process
// outlived its VM. Each attempt must fail.
func TestJobsCannotLeaveTheirVM(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the sandbox is the node-as-root case; CI runs as root")
	}
	// What the host has that jobs must not reach.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	nodeData := t.TempDir()
	if err := os.Chmod(nodeData, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(nodeData, "node-credential"), []byte("secret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := New(0)
	d.StateDir, d.Hide = filepath.Join(nodeData, "synthetic"), []string{nodeData}
	vm1, err := d.Start(t.Context(), driver.Spec{InstanceID: "vm-one", HostIP: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer vm1.Destroy(t.Context())
	vm2, err := d.Start(t.Context(), driver.Spec{InstanceID: "vm-two", HostIP: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer vm2.Destroy(t.Context())
	home2 := vm2.(*vm).home
	marker := fmt.Sprintf("corral-escape-%d", os.Getpid())
	script := fmt.Sprintf(`
(exec 3<>/dev/tcp/127.0.0.1/%d) 2>/dev/null && echo "loopback: reached" || echo "loopback: refused"
echo "procs: $(ls /proc | grep -c '^[0-9]')"
echo "pid1: $(tr '\0' ' ' </proc/1/cmdline)"
cat %s/node-credential 2>/dev/null && echo "credential: read" || echo "credential: hidden"
ls %s >/dev/null 2>&1 && echo "other vm: visible" || echo "other vm: hidden"
touch %s/planted 2>/dev/null && echo "other vm: written" || echo "other vm: safe"
mkdir -p /tmp/build && echo one > /tmp/build/out && echo "tmp: $(cat /tmp/build/out)"
(exec -a %s sleep 1000) >/dev/null 2>&1 &
echo done`, port, nodeData, home2, home2, marker)
	res, err := vm1.RunScript(t.Context(), []byte(script))
	if err != nil {
		t.Fatal(err)
	}
	out := res.Stdout
	for _, want := range []string{"loopback: refused", "credential: hidden", "other vm: hidden", "other vm: safe", "tmp: one", "done"} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("job: want %q; it printed:\n%s%s", want, out, res.Stderr)
		}
	}
	if !strings.Contains(out, "pid1: /bin/sh -c") && !strings.Contains(out, "corral-vm-init") {
		t.Errorf("/proc/1 is not the VM's own init:\n%s", out)
	}
	var procs int
	if i := strings.Index(out, "procs: "); i >= 0 {
		fmt.Sscanf(out[i+len("procs: "):], "%d", &procs)
	}
	if procs == 0 || procs > 10 {
		t.Errorf("the job sees %d processes in /proc, want only its VM's", procs)
	}
	// The other VM's /tmp is its own; so is the host's.
	res, err = vm2.RunScript(t.Context(), []byte(`cat /tmp/build/out 2>/dev/null || echo none`))
	if err != nil || strings.TrimSpace(res.Stdout) != "none" {
		t.Errorf("vm two sees vm one's /tmp: %q %v", res.Stdout, err)
	}
	if _, err := os.Stat("/tmp/build/out"); err == nil {
		t.Errorf("the job wrote the host's /tmp")
	}
	// Destroying the VM ends every process it started.
	if countProcesses(marker) == 0 {
		t.Fatalf("the job's background process never ran (marker %s)", marker)
	}
	if err := vm1.Destroy(t.Context()); err != nil {
		t.Fatal(err)
	}
	if countProcesses(marker) > 0 {
		t.Errorf("a process of the job outlived its VM")
	}
}

// TestJobsHaveLimits: a job had no process, memory or disk bound (ulimit -u
// 96367, no cgroup): a fork bomb or a full /tmp reached the whole node.
// Each VM is now a cgroup (pids, memory: its RAM) with bounded tmpfs.
func TestJobsHaveLimits(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the sandbox is the node-as-root case; CI runs as root")
	}
	d := New(0)
	d.StateDir, d.MaxProcesses = t.TempDir(), 50
	m, err := d.Start(t.Context(), driver.Spec{InstanceID: "limited", HostIP: "127.0.0.1", VRAMMB: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Destroy(t.Context())
	if m.(*vm).sb.cg == nil {
		t.Fatal("no cgroup on this node: the VM runs without limits")
	}
	// A fork bomb: its forks fail past the limit (bash gives up).
	marker := fmt.Sprintf("corral-bomb-%d", os.Getpid())
	res, err := m.RunScript(t.Context(), []byte(fmt.Sprintf(`for i in {1..200}; do (exec -a %s sleep 10) >/dev/null 2>&1 & done 2>/dev/null`, marker)))
	if err != nil {
		t.Fatal(err)
	}
	procs := countProcesses(marker)
	if procs == 0 || procs > 50 {
		t.Errorf("a job started %d processes with a limit of 50 (%+v)", procs, res)
	}
	// Filling /tmp (memory) past the VM's RAM: stopped.
	d.MaxProcesses = 0
	m, err = d.Start(t.Context(), driver.Spec{InstanceID: "limited-ram", HostIP: "127.0.0.1", VRAMMB: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Destroy(t.Context())
	res, err = m.RunScript(t.Context(), []byte(`dd if=/dev/zero of=/tmp/big bs=1M count=200 2>/dev/null; ls -s --block-size=1M /tmp/big | cut -d' ' -f1`))
	if err != nil {
		t.Fatal(err)
	}
	mib := -1
	fmt.Sscanf(strings.TrimSpace(res.Stdout), "%d", &mib)
	if mib >= 200 || res.ReturnCode == 0 && mib < 0 {
		t.Errorf("a job with 64 MiB of RAM wrote %d MiB to its /tmp (%+v)", mib, res)
	}
	t.Logf("limits held: %d processes of 200 asked; the /tmp writer: exit %d, %d MiB", procs, res.ReturnCode, mib)
}

// countProcesses counts processes whose argv[0] is name.
func countProcesses(name string) int {
	n := 0
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.HasPrefix(string(b), name+"\x00") {
			n++
		}
	}
	return n
}
