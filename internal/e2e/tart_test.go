package e2e

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/fakecli"
)

// TestUpWithTart follows the README's "Mac nodes" section with the strict
// fake tart on PATH: an image pushed with `tart push` from another Mac
// through the registry's /v2/ (auth on) is a template; `corral up --driver
// tart` starts an instance of it (the node's tart pulls it with the node's
// token), which reaches Started with an SSH endpoint, runs its startup
// script over SSH, and terminates, leaving no VM.
func TestUpWithTart(t *testing.T) {
	bin := t.TempDir()
	if err := fakecli.Install(bin, "tart"); err != nil {
		t.Fatal(err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	sshPort := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	nodeHome, pusherHome := filepath.Join(t.TempDir(), "node"), filepath.Join(t.TempDir(), "pusher")
	fakeEnv := []string{"PATH=" + bin + ":" + os.Getenv("PATH"), "FAKE_TART_SSH_PORT=" + sshPort,
		"FAKE_TART_DISK_BYTES=" + strconv.Itoa(2<<20+7), "FAKE_TART_CHUNK=" + strconv.Itoa(1<<20)}

	cmd := exec.Command(corralBinary(t), "up", "--listen", "127.0.0.1:0", "--registry-listen", "127.0.0.1:0",
		"--data-dir", t.TempDir(), "--enable-auth", "--root-token", "s3cret", "--driver", "tart", "--node-tart-ssh-port", sshPort,
		"--etcd-client-url", "http://127.0.0.1:0", "--etcd-peer-url", "http://127.0.0.1:0")
	cmd.Env = append(os.Environ(), append(fakeEnv, "TART_HOME="+nodeHome)...)
	stdout, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	fields := map[string]*regexp.Regexp{"ctl": regexp.MustCompile(`controller API:\s+(\S+)/api/v1`),
		"oci": regexp.MustCompile(`^\s+OCI registry:\s+(\S+)`)}
	got := map[string]string{}
	lines := bufio.NewScanner(stdout)
	for len(got) < len(fields) && lines.Scan() {
		for k, re := range fields {
			if m := re.FindStringSubmatch(lines.Text()); m != nil {
				got[k] = m[1]
			}
		}
	}
	if len(got) < len(fields) {
		t.Fatalf("corral up printed %v; stderr:\n%s", got, stderr.String())
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()

	// Another Mac pushes an image with tart (root's credentials).
	tart := func(args ...string) {
		t.Helper()
		c := exec.Command(filepath.Join(bin, "tart"), args...)
		c.Env = append(os.Environ(), append(fakeEnv, "TART_HOME="+pusherHome,
			"TART_REGISTRY_USERNAME=root", "TART_REGISTRY_PASSWORD=s3cret")...)
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("tart %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	tart("create", "sonoma", "--from-ipsw", "latest")
	tart("push", "sonoma", got["oci"]+"/macos/sonoma:v1", "--insecure")

	cl, _ := client.New([]string{got["ctl"]}, "")
	cl.UseRootToken("s3cret")
	vmid := apiv1.OCITemplateID("macos/sonoma")
	code, env := callH(t, "GET", got["ctl"]+"/api/v1/registry/vm", "", map[string]string{"Authorization": basic("root", "s3cret")})
	if code != 200 || !strings.Contains(fmt.Sprint(env["body"]), vmid) || !strings.Contains(fmt.Sprint(env["body"]), "macos/sonoma") {
		t.Fatalf("registry templates: %d %v", code, env)
	}
	script := base64.StdEncoding.EncodeToString([]byte("echo hello from $(whoami)-guest; test -f config.json"))
	code, env = callH(t, "POST", got["ctl"]+"/api/v1/vm",
		fmt.Sprintf(`{"vmid":%q,"tag":"v1","startup_script":%q,"script_monitoring":true}`, vmid, script),
		map[string]string{"Authorization": basic("root", "s3cret")})
	if code != 200 || env["status"] != "OK" {
		t.Fatalf("start: %d %v", code, env)
	}
	id := env["body"].([]any)[0].(string)
	wctx, wcancel := contextWithTimeout(60 * time.Second)
	defer wcancel()
	in, err := cl.WaitState(wctx, id, apiv1.StateStarted)
	if err != nil {
		t.Fatalf("%v; corral up stderr:\n%s", err, stderr.String())
	}
	for in.StartupScript == nil && wctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
		in, _ = cl.Instance(wctx, id)
	}
	if in.StartupScript == nil || in.StartupScript.ReturnCode != 0 || !strings.Contains(in.StartupScript.Stdout, "hello from") {
		t.Fatalf("startup script %+v", in.StartupScript)
	}
	ssh := in.VMInfo.PortForwarding[0]
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(in.VMInfo.HostIP, strconv.Itoa(ssh.HostPort)), 2*time.Second)
	if err != nil {
		t.Fatalf("SSH endpoint %s:%d: %v", in.VMInfo.HostIP, ssh.HostPort, err)
	}
	banner := make([]byte, 8)
	_, _ = io.ReadFull(conn, banner)
	conn.Close()
	if string(banner) != "SSH-2.0-" {
		t.Fatalf("SSH endpoint answered %q", banner)
	}
	if in.VMInfo.Accelerator != "tart" {
		t.Fatalf("vminfo %+v", in.VMInfo)
	}
	code, env = callH(t, "DELETE", got["ctl"]+"/api/v1/vm", fmt.Sprintf(`{"id":%q}`, id), map[string]string{"Authorization": basic("root", "s3cret")})
	if code != 200 {
		t.Fatalf("terminate: %d %v", code, env)
	}
	if _, err := cl.WaitState(wctx, id, apiv1.StateTerminated); err != nil {
		t.Fatal(err)
	}
	for wctx.Err() == nil {
		entries, _ := os.ReadDir(filepath.Join(nodeHome, "vms"))
		if len(entries) == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if entries, _ := os.ReadDir(filepath.Join(nodeHome, "vms")); len(entries) != 0 {
		t.Fatal("the instance's tart VM was not deleted")
	}

	// Saving an instance pushes it with tart as a new OCI template, with a
	// push token the node gets for that save only.
	code, env = callH(t, "POST", got["ctl"]+"/api/v1/vm", fmt.Sprintf(`{"vmid":%q,"tag":"v1"}`, vmid),
		map[string]string{"Authorization": basic("root", "s3cret")})
	if code != 200 {
		t.Fatalf("start: %d %v", code, env)
	}
	id = env["body"].([]any)[0].(string)
	if _, err := cl.WaitState(wctx, id, apiv1.StateStarted); err != nil {
		t.Fatal(err)
	}
	req, err := cl.SaveImage(wctx, apiv1.ImageRequest{ID: id, Tag: "saved", NewTemplateName: "sonoma-saved"})
	if err != nil {
		t.Fatal(err)
	}
	img := waitImage(t, cl, req, 30*time.Second)
	if img.Status != apiv1.ImageDone || img.TemplateID != apiv1.OCITemplateID("sonoma-saved") {
		t.Fatalf("save: %+v", img)
	}
	code, env = callH(t, "GET", got["ctl"]+"/api/v1/registry/vm?id="+img.TemplateID, "", map[string]string{"Authorization": basic("root", "s3cret")})
	if code != 200 || !strings.Contains(fmt.Sprint(env["body"]), "saved") {
		t.Fatalf("saved template: %d %v", code, env)
	}
}
