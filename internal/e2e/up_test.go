package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
)

// TestReadmeWalkthrough runs `corral up` as a new user would and follows the
// README: start two instances of the demo template, see them Started, reach
// the SSH endpoint, terminate, then stop with SIGTERM.
func TestReadmeWalkthrough(t *testing.T) {
	bin := corralBinary(t)
	cmd := exec.Command(bin, "up", "--listen", "127.0.0.1:0", "--data-dir", t.TempDir(),
		"--etcd-client-url", "http://127.0.0.1:0", "--etcd-peer-url", "http://127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	urlRe := regexp.MustCompile(`controller API:\s+(\S+)/api/v1`)
	vmidRe := regexp.MustCompile(`^\s+demo template:\s+(\S+)`)
	var base, vmid string
	lines := bufio.NewScanner(stdout)
	for (base == "" || vmid == "") && lines.Scan() {
		if m := urlRe.FindStringSubmatch(lines.Text()); m != nil {
			base = m[1]
		}
		if m := vmidRe.FindStringSubmatch(lines.Text()); m != nil {
			vmid = m[1]
		}
	}
	if base == "" || vmid == "" {
		t.Fatalf("corral up did not print the controller URL and demo template; stderr:\n%s", stderr.String())
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()

	ids := ok(t, "POST", base+"/api/v1/vm", fmt.Sprintf(`{"vmid":%q,"count":2}`, vmid)).([]any)
	if len(ids) != 2 {
		t.Fatalf("ids %v", ids)
	}
	cl, _ := client.New([]string{base}, "")
	for _, id := range ids {
		ctx, cancel := contextWithTimeout(10 * time.Second)
		in, err := cl.WaitState(ctx, id.(string), apiv1.StateStarted)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		ssh := in.VMInfo.PortForwarding[0]
		if ssh.GuestPort != 22 {
			t.Fatalf("first port forward %+v is not SSH", ssh)
		}
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(in.VMInfo.HostIP, fmt.Sprint(ssh.HostPort)), 2*time.Second)
		if err != nil {
			t.Fatalf("SSH endpoint of %s: %v", in.InstanceID, err)
		}
		banner := make([]byte, 8)
		_, _ = io.ReadFull(conn, banner)
		conn.Close()
		if string(banner) != "SSH-2.0-" {
			t.Fatalf("SSH endpoint answered %q", banner)
		}
	}
	ok(t, "DELETE", base+"/api/v1/vm", fmt.Sprintf(`{"id":%q}`, ids[0]))

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("corral up exited with %v after SIGTERM; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("corral up did not stop within 15s of SIGTERM")
	}
}

// TestUpWithAuth: `corral up --enable-auth` guards its registry with the
// same root token (the registry was open whatever the controller said), and
// its node still pulls the demo template with the controller's token.
func TestUpWithAuth(t *testing.T) {
	cmd := exec.Command(corralBinary(t), "up", "--listen", "127.0.0.1:0", "--registry-listen", "127.0.0.1:0",
		"--data-dir", t.TempDir(), "--enable-auth", "--root-token", "s3cret",
		"--etcd-client-url", "http://127.0.0.1:0", "--etcd-peer-url", "http://127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	fields := map[string]*regexp.Regexp{"ctl": regexp.MustCompile(`controller API:\s+(\S+)/api/v1`),
		"reg": regexp.MustCompile(`^\s+registry:\s+(\S+)`), "vmid": regexp.MustCompile(`^\s+demo template:\s+(\S+)`)}
	got := map[string]string{}
	var printed []string
	lines := bufio.NewScanner(stdout)
	for lines.Scan() {
		printed = append(printed, lines.Text())
		for k, re := range fields {
			if m := re.FindStringSubmatch(lines.Text()); m != nil {
				got[k] = m[1]
			}
		}
		if strings.Contains(lines.Text(), "corral template push") {
			break // the last hint
		}
	}
	if len(got) < len(fields) {
		t.Fatalf("corral up printed %v; stderr:\n%s", got, stderr.String())
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	// Its hints work with auth on (they got 401), and never print the token.
	hints := strings.Join(printed, "\n")
	if strings.Count(hints, `curl -s -u "root:$ANKA_ROOT_TOKEN"`) != 2 || !strings.Contains(hints, "export ANKA_ROOT_TOKEN") || strings.Contains(hints, "s3cret") {
		t.Errorf("corral up --enable-auth hints:\n%s", hints)
	}
	root := basic("root", "s3cret")
	if code, _ := authCall(t, "GET", got["reg"]+"/registry/vm", "", ""); code != 401 {
		t.Errorf("up's registry without credentials: HTTP %d, want 401", code)
	}
	if code, _ := authCall(t, "GET", got["reg"]+"/registry/vm", root, ""); code != 200 {
		t.Errorf("up's registry as root: HTTP %d", code)
	}
	cl, _ := client.New([]string{got["ctl"]}, "")
	cl.UseRootToken("s3cret")
	ctx, cancel := contextWithTimeout(30 * time.Second)
	defer cancel()
	ids, err := cl.StartInstances(ctx, map[string]any{"vmid": got["vmid"]})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.WaitState(ctx, ids[0], apiv1.StateStarted); err != nil {
		t.Fatalf("instance of the demo template: %v; stderr:\n%s", err, stderr.String())
	}
}
