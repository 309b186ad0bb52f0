package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/controller/daemon"
	"github.com/corral-build/corral/internal/testenv"
	"github.com/corral-build/corral/internal/testenv/faultproxy"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// waitInstance polls an instance until cond holds or the deadline passes.
func waitInstance(t *testing.T, c *testenv.Cluster, id string, timeout time.Duration, what string, cond func(apiv1.Instance) bool) apiv1.Instance {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(timeout)
	for {
		in, err := c.Client.Instance(ctx, id)
		if err == nil && cond(in) {
			return in
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance %s not %s after %s: %+v (err %v)", id, what, timeout, in, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTerminateBeforeNodeSawPlacement: an instance placed on a node and
// terminated before the node's long poll saw the assignment reaches
// Terminated and frees its slot; it used to stay Terminating for good.
func TestTerminateBeforeNodeSawPlacement(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{})
	proxy := faultproxy.New(t, c.Controllers[0].URL)
	// The node joins and heartbeats, but cannot see its assignments yet.
	const polls = "/api/v1/agent/assignments"
	proxy.Set(polls, faultproxy.Fault{Status: 503})
	c.StartNode(testenv.NodeOptions{Name: "n1", Capacity: 1, ControllerURLs: []string{proxy.URL}})
	ctx := context.Background()
	ids, err := c.Client.StartInstances(ctx, map[string]any{"vmid": c.TemplateID})
	if err != nil {
		t.Fatal(err)
	}
	waitInstance(t, c, ids[0], 10*time.Second, "placed", func(in apiv1.Instance) bool { return in.NodeID != "" })
	if err := c.Client.Terminate(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if proxy.Hits(polls) == 0 {
		t.Fatal("the node never tried to poll: the race was not set up")
	}
	proxy.Heal()
	c.WaitState(ids[0], apiv1.StateTerminated, 10*time.Second)

	// The slot is free: the node's only slot runs the next instance.
	ids, err = c.Client.StartInstances(ctx, map[string]any{"vmid": c.TemplateID})
	if err != nil {
		t.Fatal(err)
	}
	c.WaitState(ids[0], apiv1.StateStarted, 10*time.Second)
}

// nodeProcess runs a real `corral node` process (synthetic driver) and
// waits until it is Active; the test kills it with SIGKILL when it likes.
func nodeProcess(t *testing.T, c *testenv.Cluster, name, dataDir string, capacity int, pullTime time.Duration, flags ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(corralBinary(t), append([]string{"node", "--controller", c.Controllers[0].URL, "--token", "test-token",
		"--name", name, "--capacity", fmt.Sprint(capacity), "--ip", "127.0.0.1", "--data-dir", dataDir,
		"--synthetic-pull-time", pullTime.String(), "--synthetic-boot-time", "10ms"}, flags...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		nodes, _ := c.Client.Nodes(context.Background())
		for _, n := range nodes {
			if n.NodeName == name && n.State == apiv1.NodeActive {
				return cmd
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s never became Active; its log:\n%s", name, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestWorkLostWhileBootingIsPlacedAgain: instances whose VMs were booting
// when their node was SIGKILLed (a VM may have existed, but nothing of the
// job ran) are placed again when the node comes back; they used to end in
// Error "VM lost" (kill -9 of corral up: 10 of 50 instances that never ran).
func TestWorkLostWhileBootingIsPlacedAgain(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{LeaseTTL: 2 * time.Second})
	ctx := context.Background()
	dir := t.TempDir()
	proc := nodeProcess(t, c, "booting", dir, 3, 0, "--synthetic-boot-time", "1h")
	ids, err := c.Client.StartInstances(ctx, map[string]any{"vmid": c.TemplateID, "count": 3})
	if err != nil {
		t.Fatal(err)
	}
	// Every VM is booting: the node holds a marker for each.
	deadline := time.Now().Add(30 * time.Second)
	for {
		entries, _ := os.ReadDir(filepath.Join(dir, "running"))
		if len(entries) == len(ids) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d VMs booting", len(entries), len(ids))
		}
		time.Sleep(20 * time.Millisecond) // polling the node's data dir
	}
	proc.Process.Kill()
	proc.Wait()
	nodeProcess(t, c, "booting", dir, 3, 0)
	for _, id := range ids {
		in := waitInstance(t, c, id, 30*time.Second, "Started or Error", func(in apiv1.Instance) bool {
			return in.State == apiv1.StateStarted || in.State == apiv1.StateError
		})
		if in.State != apiv1.StateStarted {
			t.Errorf("instance %s lost while booting: %s %q, want it placed again and Started", id, in.State, in.Message)
		}
	}
}

// TestNeverStartedWorkSurvivesNodeCrash: instances placed on a node that is
// SIGKILLed while it still pulls their template never ran, so they are not
// lost: the node restarted within its lease starts them, and those of a node
// that stays dead go back to Scheduling and run elsewhere. (They used to go
// to Error "VM lost" / "went offline".)
func TestNeverStartedWorkSurvivesNodeCrash(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{LeaseTTL: 2 * time.Second})
	ctx := context.Background()
	startPulling := func(n int, node string) []string {
		t.Helper()
		ids, err := c.Client.StartInstances(ctx, map[string]any{"vmid": c.TemplateID, "count": n})
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			in := waitInstance(t, c, id, 10*time.Second, "pulling", func(in apiv1.Instance) bool { return in.State == apiv1.StatePulling })
			if in.NodeID != node {
				t.Fatalf("instance %s placed on %s, want %s", id, in.NodeID, node)
			}
		}
		return ids
	}
	nodeID := func(name string) string {
		nodes, _ := c.Client.Nodes(ctx)
		for _, n := range nodes {
			if n.NodeName == name {
				return n.NodeID
			}
		}
		t.Fatalf("no node %s", name)
		return ""
	}

	// Restarted within its lease: the node starts what it never started.
	dir := t.TempDir()
	proc := nodeProcess(t, c, "phoenix", dir, 6, time.Hour)
	ids := startPulling(6, nodeID("phoenix"))
	proc.Process.Kill()
	proc.Wait()
	proc = nodeProcess(t, c, "phoenix", dir, 6, 0)
	for _, id := range ids {
		c.WaitState(id, apiv1.StateStarted, 10*time.Second)
	}
	for _, id := range ids {
		c.Client.Terminate(ctx, id)
	}
	for _, id := range ids {
		c.WaitState(id, apiv1.StateTerminated, 10*time.Second)
	}

	proc.Process.Kill()
	proc.Wait()
	c.WaitNodeState(nodeID("phoenix"), apiv1.NodeOffline, 10*time.Second)

	// Dead for good: its lease expires, the work is placed again, keeping
	// its id, and runs on another node.
	doomed := nodeProcess(t, c, "doomed", t.TempDir(), 3, time.Hour)
	ids = startPulling(3, nodeID("doomed"))
	doomed.Process.Kill()
	doomed.Wait()
	c.StartNode(testenv.NodeOptions{Name: "rescue", Capacity: 3})
	for _, id := range ids {
		in := c.WaitState(id, apiv1.StateStarted, 15*time.Second)
		if in.NodeID == nodeID("doomed") {
			t.Fatalf("instance %s still on the dead node", id)
		}
	}
}

// TestHungRegistryDoesNotStallScheduling: once the cloud knows a template,
// a registry whose template API hangs forever delays neither new start
// requests nor placements of it (the scheduler plans from a cached catalog
// refreshed in the background; it used to ask synchronously, without a
// deadline, on every pass).
func TestHungRegistryDoesNotStallScheduling(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Registry: true, RegistryProxy: true,
		Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 8}}})
	ctx := context.Background()
	rc, _ := client.NewRegistry(c.Registry.URL)
	res, err := rc.Push(ctx, client.PushOptions{Source: newVMDir(t, allMiB(1)...), Template: "steady", Tag: "v1", Arch: runtimeArch()})
	if err != nil {
		t.Fatal(err)
	}
	ids, err := c.Client.StartInstances(ctx, map[string]any{"vmid": res.TemplateID})
	if err != nil {
		t.Fatal(err)
	}
	c.WaitState(ids[0], apiv1.StateStarted, 20*time.Second)

	// The controller's template lookups now hang; node pulls still work.
	c.RegistryProxy.Set("/registry/vm", faultproxy.Fault{Hang: true})
	c.RegistryProxy.Set("/registry/v2/vm", faultproxy.Fault{Hang: true})
	c.RegistryProxy.Set("/registry/status", faultproxy.Fault{Hang: true})
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	more, err := c.Client.StartInstances(sctx, map[string]any{"vmid": res.TemplateID, "count": 3})
	if err != nil {
		t.Fatalf("start while the registry hangs: %v", err)
	}
	for _, id := range more {
		c.WaitState(id, apiv1.StateStarted, 30*time.Second)
	}
	if c.RegistryProxy.Hits("/registry/vm")+c.RegistryProxy.Hits("/registry/v2/vm") == 0 {
		t.Fatal("the controller never asked the hung registry: the fault was not exercised")
	}
}

// TestStoppedNodeGoesOfflineAtOnce: a node process stopped with SIGTERM
// releases its lease before it exits, so it is Offline (and given no new
// work) at once, not after its 30 s lease TTL.
func TestStoppedNodeGoesOfflineAtOnce(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{LeaseTTL: 30 * time.Second})
	proc := nodeProcess(t, c, "leaver", t.TempDir(), 2, 0)
	nodes, _ := c.Client.Nodes(context.Background())
	stoppedAt := time.Now()
	if err := proc.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	proc.Wait()
	c.WaitNodeState(nodes[0].NodeID, apiv1.NodeOffline, 10*time.Second)
	t.Logf("Offline %s after SIGTERM (lease TTL 30 s)", time.Since(stoppedAt).Round(time.Millisecond))
}

// TestPartitionedNodeFencesItself: a node cut off from every controller
// stops its VMs itself once its lease has certainly expired (the cloud has
// already failed those instances); it used to keep them running for as long
// as the partition lasted.
func TestPartitionedNodeFencesItself(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{LeaseTTL: 2 * time.Second})
	proxy := faultproxy.New(t, c.Controllers[0].URL)
	n := c.StartNode(testenv.NodeOptions{Name: "island", Capacity: 2, ControllerURLs: []string{proxy.URL}})
	ids, err := c.Client.StartInstances(context.Background(), map[string]any{"vmid": c.TemplateID, "count": 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		c.WaitState(id, apiv1.StateStarted, 10*time.Second)
	}
	proxy.Set("/api/v1/agent/", faultproxy.Fault{Hang: true}) // the partition
	for _, id := range ids {
		c.WaitState(id, apiv1.StateError, 10*time.Second) // the cloud gave up on them
	}
	for deadline := time.Now().Add(10 * time.Second); len(n.Agent.Running()) > 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("partitioned node still runs %v 10 s after the cloud failed them", n.Agent.Running())
		}
	}
	proxy.Heal() // the partition ends: the node rejoins and shuts down quickly
}

// TestJoinTokenShownOnce: the controller prints the join token only on the
// start that generates it (or when asked), not into the log of every start.
func TestJoinTokenShownOnce(t *testing.T) {
	e := testenv.StartEtcd(t)
	tokenLine := func(extra ...string) string {
		t.Helper()
		args := append([]string{"controller", "--etcd-endpoints", e.ClientURL, "--listen", "127.0.0.1:0",
			"--data-dir", t.TempDir()}, extra...)
		cmd := exec.Command(corralBinary(t), args...)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if line, ok := strings.CutPrefix(sc.Text(), "join token: "); ok {
				return line
			}
		}
		t.Fatal("the controller printed no join token line")
		return ""
	}
	first := tokenLine()
	if len(first) != 32 {
		t.Fatalf("first start: %q, want the generated token", first)
	}
	if again := tokenLine(); strings.Contains(again, first) {
		t.Fatalf("second start printed the token again: %q", again)
	}
	// etcd keeps only the token's hash: nobody can read it back, and
	// rotation is how to get a usable one.
	if asked := tokenLine("--show-join-token"); strings.Contains(asked, first) || !strings.Contains(asked, "join-token rotate") {
		t.Fatalf("--show-join-token with a stored token printed %q", asked)
	}
	out, err := exec.Command(corralBinary(t), "join-token", "rotate", "--etcd-endpoints", e.ClientURL).Output() // the token alone on stdout
	rotated := strings.TrimSpace(string(out))
	if err != nil || len(rotated) != 32 || rotated == first {
		t.Fatalf("join-token rotate: %v %q", err, out)
	}
	if asked := tokenLine("--join-token", "chosen-token", "--show-join-token"); asked != "chosen-token" {
		t.Fatalf("--show-join-token with --join-token printed %q", asked)
	}
}

// TestJoinTokenHashedAndRotated: etcd holds only the join token's hash (a
// plaintext token older controllers stored is hashed at start); rotating
// it refuses the old token to new joins while joined nodes keep working.
func TestJoinTokenHashedAndRotated(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 1}}})
	ctx := context.Background()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.Etcd.ClientURL}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	noPlaintext := func(secret string) {
		t.Helper()
		resp, err := cli.Get(ctx, "", clientv3.WithFromKey())
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range resp.Kvs {
			if strings.Contains(string(kv.Value), secret) {
				t.Errorf("etcd key %s holds the join token in plaintext", kv.Key)
			}
		}
	}
	noPlaintext("test-token")
	base := c.Controllers[0].URL
	join := func(token string) int {
		code, _ := authCall(t, "POST", base+"/api/v1/agent/join", "Bearer "+token,
			`{"report":{"node_id":"`+apiv1.NewID()+`","node_name":"late","capacity":1}}`)
		return code
	}
	if code := join("test-token"); code != 200 {
		t.Fatalf("join with the token: HTTP %d", code)
	}
	var rotated struct {
		Body struct {
			JoinToken string `json:"join_token"`
		}
	}
	code, body := authCall(t, "POST", base+"/api/v1/join-token", "", "")
	if json.Unmarshal([]byte(body), &rotated); code != 200 || len(rotated.Body.JoinToken) != 32 {
		t.Fatalf("rotate: HTTP %d %s", code, body)
	}
	noPlaintext(rotated.Body.JoinToken)
	if code := join("test-token"); code != 401 {
		t.Errorf("join with the old token after rotation: HTTP %d, want 401", code)
	}
	if code := join(rotated.Body.JoinToken); code != 200 {
		t.Errorf("join with the new token: HTTP %d", code)
	}
	ids, err := c.Client.StartInstances(ctx, map[string]any{"vmid": c.TemplateID})
	if err != nil {
		t.Fatal(err)
	}
	c.WaitState(ids[0], apiv1.StateStarted, 15*time.Second) // n1 joined before: still served

	// A plaintext token from an older controller is hashed in its place.
	e := testenv.StartEtcd(t)
	old, _ := clientv3.New(clientv3.Config{Endpoints: []string{e.ClientURL}})
	defer old.Close()
	if _, err := old.Put(ctx, "/corral/config/join-token", "legacy-token"); err != nil {
		t.Fatal(err)
	}
	d, err := daemon.Start(ctx, daemon.Config{ListenAddr: "127.0.0.1:0", EtcdEndpoints: []string{e.ClientURL},
		TemplatesFile: filepath.Join(t.TempDir(), "templates.json"), EtcdLogLevel: "off", Log: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.JoinToken != "legacy-token" {
		t.Errorf("migrated start knows the token as %q", d.JoinToken)
	}
	if resp, _ := old.Get(ctx, "/corral/config/join-token"); len(resp.Kvs) != 0 {
		t.Error("the plaintext join token is still in etcd")
	}
	if code, _ := authCall(t, "POST", d.URL+"/api/v1/agent/join", "Bearer legacy-token",
		`{"report":{"node_id":"`+apiv1.NewID()+`","node_name":"old","capacity":1}}`); code != 200 {
		t.Errorf("join with the migrated token: HTTP %d", code)
	}
}
