package synthetic

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/driver"
	"github.com/corral-build/corral/internal/driver/drivertest"
	"golang.org/x/crypto/ssh"
)

func TestLifecycle(t *testing.T) {
	d := New(10 * time.Millisecond)
	m, err := d.Start(t.Context(), driver.Spec{InstanceID: "0123456789", HostIP: "127.0.0.1", VCPU: 4, VRAMMB: 8192})
	if err != nil {
		t.Fatal(err)
	}
	info := m.Info()
	if info.Status != "running" || info.CPUCores != 4 || info.RAM != "8G" || info.IP == "" {
		t.Fatalf("info %+v", info)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(info.PortForwarding[0].HostPort))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()

	res, err := m.RunScript(t.Context(), []byte("echo $CORRAL_INSTANCE_ID; exit 2"))
	if err != nil || res.ReturnCode != 2 || res.Stdout != "0123456789\n" {
		t.Fatalf("script %+v %v", res, err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	res, err = m.RunScript(ctx, []byte("sleep 10"))
	if err != nil || !res.DidTimeout {
		t.Fatalf("timeout %+v %v", res, err)
	}

	m.(*vm).Crash(errTest)
	select {
	case <-m.Done():
	case <-time.After(time.Second):
		t.Fatal("Done not closed after crash")
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Fatal("SSH endpoint still open after crash")
	}
	if err := m.Destroy(t.Context()); err != nil || m.Info().Status != "stopped" {
		t.Fatalf("destroy: %v %+v", err, m.Info())
	}
}

type testErr struct{}

func (testErr) Error() string { return "test crash" }

var errTest = testErr{}

// TestScriptsAreConfined: a startup script is anyone's input. It sees none
// of the node's environment and runs in the VM's home; when the node runs
// as root, as nobody in the VM's sandbox (it used to run as the node's
// user, root here, with its env).
func TestScriptsAreConfined(t *testing.T) {
	t.Setenv("CORRAL_SECRET_OF_THE_NODE", "hunter2")
	d := New(0)
	d.StateDir = t.TempDir()
	m, err := d.Start(t.Context(), driver.Spec{InstanceID: "0123456789", HostIP: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	res, err := m.RunScript(t.Context(), []byte(`id -u; pwd; env | grep -c SECRET; touch ./mine && echo writable`))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(res.Stdout), "\n")
	if len(lines) != 4 || lines[2] != "0" || lines[3] != "writable" || !strings.Contains(lines[1], "corral-vm-") {
		t.Fatalf("script saw %q (stderr %q)", lines, res.Stderr)
	}
	if _, err := os.Stat(filepath.Join(m.(*vm).home, "mine")); err != nil {
		t.Errorf("what the script wrote in its home is not in the VM's home on the node: %v", err)
	}
	if err := m.Destroy(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(m.(*vm).home); !os.IsNotExist(err) {
		t.Errorf("the VM's home %s outlived it: %v", lines[1], err)
	}
	if os.Geteuid() != 0 {
		t.Logf("not root: scripts run as this user (uid %s)", lines[0])
		return
	}
	if lines[0] != "65534" {
		t.Errorf("as root, scripts ran as uid %s, want nobody (65534)", lines[0])
	}
	// An operator may choose root explicitly.
	d.ScriptUser = "root"
	m, err = d.Start(t.Context(), driver.Spec{InstanceID: "root-vm", HostIP: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Destroy(t.Context())
	res, err = m.RunScript(t.Context(), []byte(`id -u`))
	if err != nil || strings.TrimSpace(res.Stdout) != "0" {
		t.Fatalf("ScriptUser root: %+v %v", res, err)
	}
}

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
	if !hostHasProcess(marker) {
		t.Fatalf("the job's background process never ran (marker %s)", marker)
	}
	if err := vm1.Destroy(t.Context()); err != nil {
		t.Fatal(err)
	}
	if hostHasProcess(marker) {
		t.Errorf("a process of the job outlived its VM")
	}
}

// hostHasProcess reports whether a process whose argv[0] is name runs.
func hostHasProcess(name string) bool {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.HasPrefix(string(b), name+"\x00") {
			return true
		}
	}
	return false
}

func TestConformance(t *testing.T) {
	drivertest.Run(t, drivertest.Setup{
		New: func(t *testing.T) driver.Driver { return New(10 * time.Millisecond) },
		Spec: func(t *testing.T, id string) driver.Spec {
			return driver.Spec{InstanceID: id, VMID: "t1", Tag: "v1", TemplateName: "t", HostIP: "127.0.0.1"}
		},
		Saved: func(t *testing.T, id, dir, _, _ string) driver.Spec {
			return driver.Spec{InstanceID: id, VMID: "saved", Tag: "v1", TemplateDir: dir, HostIP: "127.0.0.1"}
		},
		Timeout: 10 * time.Second,
	})
}

// Scripts run with bash where the node has it, as on macOS guests: the
// GitHub Actions runner's `set -o pipefail` failed under dash.
func TestScriptsRunWithBash(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash on this node")
	}
	vm, err := New(time.Millisecond).Start(context.Background(), driver.Spec{InstanceID: "b", HostIP: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Destroy(context.Background())
	res, err := vm.RunScript(context.Background(), []byte("set -o pipefail; false | true"))
	if err != nil || res.ReturnCode != 1 { // dash: 2, "Illegal option -o pipefail"
		t.Fatalf("bash script: %+v %v", res, err)
	}
	res, _ = vm.RunScript(context.Background(), []byte("set -o pipefail; echo ok"))
	if res.ReturnCode != 0 || res.Stdout != "ok\n" {
		t.Fatalf("pipefail: %+v", res)
	}
}

// TestSSHJob runs a CI job the way executors do, over the instance's SSH
// endpoint (it only sent a banner): log in with the template's user and
// password, upload a script through stdin, run it, read its output and exit
// status, use a shell session, and be refused with a wrong password.
func TestSSHJob(t *testing.T) {
	d := New(time.Millisecond)
	vm, err := d.Start(context.Background(), driver.Spec{InstanceID: "job", HostIP: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Destroy(context.Background())
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(vm.Info().PortForwarding[0].HostPort))
	cfg := &ssh.ClientConfig{User: "anka", Auth: []ssh.AuthMethod{ssh.Password("admin")},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 5 * time.Second}
	cl, err := ssh.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	run := func(cmd, stdin string) (string, int) {
		t.Helper()
		s, err := cl.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		s.Stdin = strings.NewReader(stdin)
		out, err := s.CombinedOutput(cmd)
		var ee *ssh.ExitError
		if errors.As(err, &ee) {
			return string(out), ee.ExitStatus()
		} else if err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		return string(out), 0
	}
	if out, code := run("cat > job.sh", "set -eo pipefail\necho building in $(pwd)\necho artifact > out.txt\nexit 3\n"); code != 0 {
		t.Fatalf("upload: %d %s", code, out)
	}
	out, code := run("bash job.sh", "")
	if code != 3 || !strings.Contains(out, "building in /") {
		t.Fatalf("job: exit %d, output %q", code, out)
	}
	if out, _ := run("cat out.txt", ""); out != "artifact\n" {
		t.Fatalf("the job's files do not persist across sessions: %q", out)
	}
	if out, code := run("", "echo from a shell\nexit 4\n"); code != 4 || out != "from a shell\n" {
		t.Fatalf("shell session: exit %d %q", code, out)
	}
	bad := *cfg
	bad.Auth = []ssh.AuthMethod{ssh.Password("wrong")}
	if c, err := ssh.Dial("tcp", addr, &bad); err == nil {
		c.Close()
		t.Fatal("logged in with a wrong password")
	}
	vm.Destroy(context.Background())
	if _, err := ssh.Dial("tcp", addr, cfg); err == nil {
		t.Fatal("SSH still open after destroy")
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
