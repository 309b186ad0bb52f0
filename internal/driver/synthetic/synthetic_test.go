package synthetic

import (
	"context"
	"errors"
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
