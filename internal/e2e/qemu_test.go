package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/driver/qemu"
	"github.com/corral-build/corral/internal/driver/qemu/qemutest"
	"github.com/corral-build/corral/internal/testenv"
	"golang.org/x/crypto/ssh"
)

// TestQEMUInstanceEndToEnd: a QEMU template pushed to the registry, started
// through the API on a qemu node, reachable by SSH as a CI job would reach
// it (its startup script authorizes the job's key), and a guest that dies
// on its own is reported as Error with its slot freed.
func TestQEMUInstanceEndToEnd(t *testing.T) {
	img := qemutest.Image(t)
	stateDir := t.TempDir()
	drv, err := qemu.New(qemu.Config{StateDir: stateDir, ForwardHost: "127.0.0.1", BootTimeout: 2 * time.Minute,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	c := testenv.StartCluster(t, testenv.Options{Registry: true, Nodes: []testenv.NodeOptions{{Name: "linux-1", Capacity: 2, Driver: drv}}})
	rc, _ := client.NewRegistry(c.Registry.URL)
	res, err := rc.Push(context.Background(), client.PushOptions{Source: img, Template: "tiny-linux", Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}

	_, userKey, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(userKey)
	authorize := fmt.Sprintf("echo '%s' >> /root/.ssh/authorized_keys\necho ready", strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))))
	base := c.Controllers[0].URL + "/api/v1"
	body := fmt.Sprintf(`{"vmid":%q,"startup_script":%q,"script_monitoring":true,"script_timeout":60}`,
		res.TemplateID, base64.StdEncoding.EncodeToString([]byte(authorize)))
	id := ok(t, "POST", base+"/vm", body).([]any)[0].(string)
	in := c.WaitState(id, apiv1.StateStarted, 3*time.Minute)
	if in.StartupScript == nil || in.StartupScript.Stdout != "ready\n" || in.VMInfo.Accelerator == "" {
		t.Fatalf("instance %+v script %+v", in.VMInfo, in.StartupScript)
	}

	// SSH in as the user, through the reported endpoint.
	fw := in.VMInfo.PortForwarding[0]
	addr := net.JoinHostPort(in.VMInfo.HostIP, strconv.Itoa(fw.HostPort))
	conn, err := ssh.Dial("tcp", addr, &ssh.ClientConfig{User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("user SSH to %s: %v", addr, err)
	}
	sess, _ := conn.NewSession()
	out, err := sess.Output("uname -r; head -c 20 /dev/vda")
	conn.Close()
	if err != nil || !strings.Contains(string(out), "corral-template-disk") {
		t.Fatalf("in the guest: %q %v", out, err)
	}

	// The guest dies on its own: Error with a reason, slot freed.
	pid, err := os.ReadFile(filepath.Join(stateDir, "instances", id, "qemu.pid"))
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(strings.TrimSpace(string(pid)))
	proc, _ := os.FindProcess(p)
	proc.Kill()
	in = c.WaitState(id, apiv1.StateError, 10*time.Second)
	if !strings.Contains(in.Message, "VM exited unexpectedly") {
		t.Fatalf("message %q", in.Message)
	}
	if n := c.WaitNodeState(in.NodeID, apiv1.NodeActive, time.Second); n.VMCount != 0 {
		t.Fatalf("dead guest still holds a slot: vm_count %d", n.VMCount)
	}
	ok(t, "DELETE", base+"/vm", `{"id":"`+id+`"}`)
	c.WaitState(id, apiv1.StateTerminated, 10*time.Second)
	// The node cleans up once it sees the assignment gone.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(stateDir, "instances", id)); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("overlay left after terminate")
		}
	}
}

// TestQEMUSaveImage: a QEMU instance's disk, changed by the pre-save script,
// is saved as a new tag; an instance of that tag boots with the change and
// the original tag is untouched.
func TestQEMUSaveImage(t *testing.T) {
	img := qemutest.Image(t)
	drv, err := qemu.New(qemu.Config{StateDir: t.TempDir(), ForwardHost: "127.0.0.1", BootTimeout: 2 * time.Minute,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	c := testenv.StartCluster(t, testenv.Options{Registry: true, Nodes: []testenv.NodeOptions{{Name: "linux-1", Capacity: 2, Driver: drv}}})
	rc, _ := client.NewRegistry(c.Registry.URL)
	ctx := context.Background()
	res, err := rc.Push(ctx, client.PushOptions{Source: img, Template: "tiny-linux", Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	readMarker := base64.StdEncoding.EncodeToString([]byte("dd if=/dev/vda bs=512 skip=8 count=1 2>/dev/null | head -c 15"))
	start := func(tag string) apiv1.Instance {
		t.Helper()
		ids, err := c.Client.StartInstances(ctx, map[string]any{"vmid": res.TemplateID, "tag": tag,
			"startup_script": readMarker, "script_monitoring": true, "script_timeout": 60})
		if err != nil {
			t.Fatal(err)
		}
		return c.WaitState(ids[0], apiv1.StateStarted, 3*time.Minute)
	}

	in := start("v1")
	if in.StartupScript == nil || strings.Contains(in.StartupScript.Stdout, "saved-by-corral") {
		t.Fatalf("v1 disk already marked: %+v", in.StartupScript)
	}
	req, err := c.Client.SaveImage(ctx, apiv1.ImageRequest{ID: in.InstanceID, Tag: "v2",
		Script: "printf saved-by-corral | dd of=/dev/vda bs=512 seek=8 2>/dev/null"})
	if err != nil {
		t.Fatal(err)
	}
	if img := waitImage(t, c.Client, req, 2*time.Minute); img.Status != apiv1.ImageDone {
		t.Fatalf("save: %+v", img)
	}
	c.WaitState(in.InstanceID, apiv1.StateTerminated, 30*time.Second)

	if in := start("v2"); in.StartupScript == nil || in.StartupScript.Stdout != "saved-by-corral" {
		t.Fatalf("v2 instance reads %+v", in.StartupScript)
	}
	if in := start("v1"); in.StartupScript == nil || strings.Contains(in.StartupScript.Stdout, "saved-by-corral") {
		t.Fatalf("v1 changed by the save: %+v", in.StartupScript)
	}
}
