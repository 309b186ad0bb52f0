package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/testenv"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestLeaderKilled: two controllers on one etcd; the scheduling leader dies
// without resigning; the other schedules new instances within 5 s, and no
// instance is ever placed twice.
func TestLeaderKilled(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Controllers: 2, SchedulerTTL: 2 * time.Second,
		Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 40}}})
	ctx := context.Background()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.Etcd.ClientURL}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	startRev := mustRev(t, cli)

	// Both controllers accept starts while one of them leads.
	for i := range 10 {
		ok(t, "POST", c.Controllers[i%2].URL+"/api/v1/vm", `{"vmid":"`+c.TemplateID+`","count":2}`)
	}
	waitStarted(t, c, 20)

	leader := leaderURL(t, cli)
	leaderKey := electionKeys(t, cli)[0]
	var survivor string
	killedAt := time.Now()
	for _, d := range c.Controllers {
		if d.URL == leader {
			d.Kill()
		} else {
			survivor = d.URL
		}
	}
	if survivor == "" || survivor == leader {
		t.Fatalf("leader %q not among controllers %v", leader, c.URLs())
	}
	// A crash does not resign: the dead leader's key stays until its lease
	// expires, so failover below really waits for the TTL.
	if keys := electionKeys(t, cli); keys[0] != leaderKey {
		t.Fatalf("the killed leader's election key %s vanished at once (resigned or revoked): %v", leaderKey, keys)
	}
	ids := ok(t, "POST", survivor+"/api/v1/vm", `{"vmid":"`+c.TemplateID+`","count":5}`).([]any)
	// Within the TTL (2 s) plus a pass and the nodes' boot, with CI slack.
	for _, id := range ids {
		c.WaitState(id.(string), apiv1.StateStarted, time.Until(killedAt.Add(8*time.Second)))
	}
	t.Logf("leader %s killed; survivor %s placed new instances after %s", leader, survivor, time.Since(killedAt))

	if now := leaderURL(t, cli); now != survivor {
		t.Errorf("leader after kill is %s, want the survivor %s", now, survivor)
	}

	// Every assignment key was created exactly once in etcd's history.
	created := map[string]int{}
	resp, err := cli.Get(ctx, "/corral/assign/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	for wr := range cli.Watch(wctx, "/corral/assign/", clientv3.WithPrefix(), clientv3.WithRev(startRev),
		clientv3.WithFilterDelete()) {
		for _, ev := range wr.Events {
			if ev.Type == mvccpb.PUT && ev.IsCreate() {
				created[filepath.Base(string(ev.Kv.Key))]++
			}
		}
		if wr.Header.Revision >= resp.Header.Revision {
			break
		}
	}
	if len(created) != 25 {
		t.Errorf("%d instances placed, want 25", len(created))
	}
	for id, n := range created {
		if n != 1 {
			t.Errorf("instance %s placed %d times", id, n)
		}
	}
}

func mustRev(t *testing.T, cli *clientv3.Client) int64 {
	resp, err := cli.Get(context.Background(), "/")
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

// electionKeys lists the scheduler election's keys, the leader's first.
func electionKeys(t *testing.T, cli *clientv3.Client) []string {
	t.Helper()
	resp, err := cli.Get(context.Background(), "/corral/election/scheduler", clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("no election key: %v", err)
	}
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	return keys
}

func leaderURL(t *testing.T, cli *clientv3.Client) string {
	t.Helper()
	resp, err := cli.Get(context.Background(), "/corral/election/scheduler", clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("no election key: %v", err)
	}
	_, url, _ := strings.Cut(string(resp.Kvs[0].Value), " ") // "host url"
	return url
}

func waitStarted(t *testing.T, c *testenv.Cluster, n int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		got := len(ok(t, "GET", c.Controllers[0].URL+"/api/v1/vm?state=Started", "").([]any))
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d Started, want %d", got, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// builtCorral is cmd/corral built once per test run (with some build
// tags), for tests that need a real process to kill.
type builtCorral struct {
	once sync.Once
	path string
	err  error
}

var corralBuild, failpointBuild builtCorral

// corralBinary builds cmd/corral once per test run.
func corralBinary(t *testing.T) string { return corralBuild.get(t) }

// failpointBinary builds corral with -tags failpoints: its registry can be
// told to SIGKILL itself at its Nth write to the store
// (internal/registry/daemon/failpoints.go).
func failpointBinary(t *testing.T) string { return failpointBuild.get(t, "-tags", "failpoints") }

func (b *builtCorral) get(t *testing.T, flags ...string) string {
	t.Helper()
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", "corral-bin-")
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, "corral")
		args := append(append([]string{"build"}, flags...), "-o", b.path, "github.com/corral-build/corral/cmd/corral")
		if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
			b.err = &buildError{string(out), err}
		}
	})
	if b.err != nil {
		t.Fatalf("build corral %v: %v", flags, b.err)
	}
	return b.path
}

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string { return e.err.Error() + ": " + e.out }

// TestNodeKilledWithoutGoodbye: a real `corral node` process is SIGKILLed;
// after its lease TTL its instances are no longer Started, say why, and its
// capacity is free.
func TestNodeKilledWithoutGoodbye(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{LeaseTTL: 2 * time.Second})
	bin := corralBinary(t)
	cmd := exec.Command(bin, "node", "--controller", c.Controllers[0].URL, "--token", "test-token",
		"--name", "doomed", "--capacity", "2", "--ip", "127.0.0.1", "--data-dir", t.TempDir())
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	var nodeID string
	deadline := time.Now().Add(10 * time.Second)
	for nodeID == "" {
		for _, n := range ok(t, "GET", c.Controllers[0].URL+"/api/v1/node", "").([]any) {
			if nm := n.(map[string]any); nm["node_name"] == "doomed" && nm["state"] == apiv1.NodeActive {
				nodeID = nm["node_id"].(string)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("node process never became Active; its log:\n%s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	ids := ok(t, "POST", c.Controllers[0].URL+"/api/v1/vm", `{"vmid":"`+c.TemplateID+`","count":2}`).([]any)
	for _, id := range ids {
		c.WaitState(id.(string), apiv1.StateStarted, 10*time.Second)
	}

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		in := c.WaitState(id.(string), apiv1.StateError, 10*time.Second)
		if !strings.Contains(in.Message, "doomed went offline") {
			t.Errorf("instance %s message %q, want it to name the lost node", in.InstanceID, in.Message)
		}
	}
	n := c.WaitNodeState(nodeID, apiv1.NodeOffline, 5*time.Second)
	if n.VMCount != 0 {
		t.Errorf("offline node still holds %d instances", n.VMCount)
	}
	// Terminating an instance of a dead node finishes at once.
	ok(t, "DELETE", c.Controllers[0].URL+"/api/v1/vm", `{"id":"`+ids[0].(string)+`"}`)
	c.WaitState(ids[0].(string), apiv1.StateTerminated, 5*time.Second)
}

// TestNodeRestartReconciles: a node process killed and restarted within its
// lease finds the instances it ran: the controller still wants them, their
// VMs are gone, so they fail with a reason (never silently rebooted), and
// terminating them completes. A graceful stop reports its instances failed.
func TestNodeRestartReconciles(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{LeaseTTL: 10 * time.Second})
	bin := corralBinary(t)
	dataDir := t.TempDir()
	var stderr strings.Builder
	startNode := func() *exec.Cmd {
		cmd := exec.Command(bin, "node", "--controller", c.Controllers[0].URL, "--token", "test-token",
			"--name", "phoenix", "--capacity", "4", "--ip", "127.0.0.1", "--data-dir", dataDir)
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	node := startNode()
	deadline := time.Now().Add(10 * time.Second)
	for len(ok(t, "GET", c.Controllers[0].URL+"/api/v1/node", "").([]any)) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("node never joined:\n%s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	base := c.Controllers[0].URL + "/api/v1"
	ids := ok(t, "POST", base+"/vm", `{"vmid":"`+c.TemplateID+`","count":2}`).([]any)
	for _, id := range ids {
		c.WaitState(id.(string), apiv1.StateStarted, 10*time.Second)
	}
	_ = node.Process.Kill()
	_ = node.Wait()
	node = startNode()
	for _, id := range ids {
		in := c.WaitState(id.(string), apiv1.StateError, 10*time.Second)
		if in.Message != "VM lost: the node agent restarted while it ran" {
			t.Errorf("message %q", in.Message)
		}
	}
	ok(t, "DELETE", base+"/vm", `{"id":"`+ids[0].(string)+`"}`)
	c.WaitState(ids[0].(string), apiv1.StateTerminated, 5*time.Second)

	// A fresh instance runs normally on the restarted node; a graceful stop
	// (SIGTERM) reports it failed at once instead of leaving it Started.
	fresh := ok(t, "POST", base+"/vm", `{"vmid":"`+c.TemplateID+`"}`).([]any)[0].(string)
	c.WaitState(fresh, apiv1.StateStarted, 10*time.Second)
	_ = node.Process.Signal(syscall.SIGTERM)
	in := c.WaitState(fresh, apiv1.StateError, 5*time.Second)
	if in.Message != "node agent shut down; VM destroyed" {
		t.Errorf("after SIGTERM: %q", in.Message)
	}
}
