package compose

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
)

func run(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestComposeStack builds the image, runs docker-compose (on podman) with a
// synthetic node, starts an instance through the published controller port,
// pushes and pulls a template through the published registry port, and
// brings everything down.
func TestComposeStack(t *testing.T) {
	// It runs wherever podman and docker-compose are installed; with
	// CORRAL_TEST_COMPOSE=1 (.ci/run) their absence is a failure.
	for _, bin := range []string{"podman", "docker-compose"} {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("CORRAL_TEST_COMPOSE") != "" {
				t.Fatalf("%s not installed (CORRAL_TEST_COMPOSE is set)", bin)
			}
			t.Skipf("%s not installed; set CORRAL_TEST_COMPOSE=1 to make that a failure", bin)
		}
	}
	dir := t.TempDir()
	run(t, []string{"CGO_ENABLED=0"}, "go", "build", "-trimpath", "-o", filepath.Join(dir, "corral"), "github.com/corral-build/corral/cmd/corral")
	data, _ := os.ReadFile("Containerfile.local")
	os.WriteFile(filepath.Join(dir, "Containerfile"), data, 0o644)
	tag := make([]byte, 4)
	rand.Read(tag)
	image := "localhost/corral:test-" + hex.EncodeToString(tag)
	// runc: crun refuses the hybrid cgroup layout of some CI machines.
	run(t, nil, "podman", "--runtime", "runc", "build", "-q", "-t", image, dir)
	t.Cleanup(func() { exec.Command("podman", "rmi", "-f", image).Run() })

	sock := filepath.Join(dir, "podman.sock")
	svc := exec.Command("podman", "--runtime", "runc", "system", "service", "--time=0", "unix://"+sock)
	if err := svc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Process.Kill(); svc.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("podman API socket did not appear")
		}
	}
	ctlPort, regPort := freePort(t), freePort(t)
	env := []string{"DOCKER_HOST=unix://" + sock, "CORRAL_IMAGE=" + image, "CORRAL_JOIN_TOKEN=compose-test",
		fmt.Sprint("CORRAL_CONTROLLER_PORT=", ctlPort), fmt.Sprint("CORRAL_REGISTRY_PORT=", regPort),
		"COMPOSE_PROJECT_NAME=corral" + hex.EncodeToString(tag)}
	files := []string{"-f", "docker-compose.yml", "-f", "docker-compose.node.yml"}
	t.Cleanup(func() {
		cmd := exec.Command("docker-compose", append(files, "down", "-v")...)
		cmd.Env = append(os.Environ(), env...)
		cmd.Run()
	})
	run(t, env, "docker-compose", append(files, "up", "-d")...)

	ctl := fmt.Sprintf("http://127.0.0.1:%d", ctlPort)
	cl, _ := client.New([]string{ctl}, "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for {
		nodes, err := cl.Nodes(ctx)
		if err == nil && len(nodes) == 1 && nodes[0].State == apiv1.NodeActive {
			break
		}
		if ctx.Err() != nil {
			cmd := exec.Command("docker-compose", append(files, "logs", "--tail", "40")...)
			cmd.Env = append(os.Environ(), env...)
			logs, _ := cmd.CombinedOutput()
			t.Fatalf("stack not ready: %v %v\n%s", nodes, err, logs)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// Push through the published registry port; the controller sees it.
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "config.json"), []byte(fmt.Sprintf(`{"arch":%q}`, runtime.GOARCH)), 0o644)
	disk := make([]byte, 3<<20)
	rand.Read(disk)
	os.WriteFile(filepath.Join(src, "disk.img"), disk, 0o644)
	rc, _ := client.NewRegistry(fmt.Sprintf("http://127.0.0.1:%d", regPort))
	res, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "compose-test", Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(ctl + "/api/v1/registry/vm")
	if err != nil {
		t.Fatal(err)
	}
	var env2 struct{ Body []apiv1.Template }
	json.NewDecoder(resp.Body).Decode(&env2)
	resp.Body.Close()
	if len(env2.Body) != 1 || env2.Body[0].ID != res.TemplateID {
		t.Fatalf("controller lists %v", env2.Body)
	}

	// An instance through the published controller port; the node pulls it
	// from the registry over the compose network.
	ids, err := cl.StartInstances(ctx, map[string]any{"vmid": res.TemplateID})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.WaitState(ctx, ids[0], apiv1.StateStarted); err != nil {
		t.Fatal(err)
	}
	dest := t.TempDir()
	if _, err := rc.Pull(ctx, client.PullOptions{TemplateID: res.TemplateID, Dest: dest}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dest, "disk.img")); string(got) != string(disk) {
		t.Fatal("pulled disk differs")
	}

	// The standalone registry: no controller, no etcd.
	soloPort := freePort(t)
	soloEnv := append(env[:len(env):len(env)], fmt.Sprint("CORRAL_REGISTRY_PORT=", soloPort),
		"COMPOSE_PROJECT_NAME=corralsolo"+hex.EncodeToString(tag))
	t.Cleanup(func() {
		cmd := exec.Command("docker-compose", "-f", "docker-compose.registry.yml", "down", "-v")
		cmd.Env = append(os.Environ(), soloEnv...)
		cmd.Run()
	})
	run(t, soloEnv, "docker-compose", "-f", "docker-compose.registry.yml", "up", "-d")
	solo, _ := client.NewRegistry(fmt.Sprintf("http://127.0.0.1:%d", soloPort))
	for {
		if _, err := solo.Status(ctx); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("standalone registry did not come up")
		}
		time.Sleep(300 * time.Millisecond)
	}
	if out := run(t, soloEnv, "docker-compose", "-f", "docker-compose.registry.yml", "ps", "--services"); strings.TrimSpace(out) != "registry" {
		t.Fatalf("standalone stack runs %q, want only the registry", out)
	}
	res, err = solo.Push(ctx, client.PushOptions{Source: src, Template: "solo", Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := solo.Pull(ctx, client.PullOptions{TemplateID: res.TemplateID, Dest: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
}
