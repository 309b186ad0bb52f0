package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/testenv"
)

// runCorral runs the corral binary (env nil: this process's environment)
// and answers its stdout, or its stderr when it was meant to fail; an exit
// status other than wanted fails the test. Warnings (CI's CORRAL_TEST_*
// variables) go to stderr, so they stay out of the output checked.
func runCorral(t *testing.T, env []string, wantOK bool, args ...string) string {
	t.Helper()
	cmd := exec.Command(corralBinary(t), args...)
	cmd.Env = env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if (err == nil) != wantOK {
		t.Fatalf("corral %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	if !wantOK {
		return stderr.String()
	}
	return string(out)
}

// TestCLIInstances drives instances with `corral vm` as a user would,
// without curl: start and wait (SSH endpoint printed), list (table and
// JSON), show, terminate --all; errors exit non-zero with the reason.
func TestCLIInstances(t *testing.T) {
	// A lease of 10 s, not 2: on a loaded machine a late heartbeat made the
	// node lost and its instances Error mid-test (seen once in 5 runs).
	c := testenv.StartCluster(t, testenv.Options{LeaseTTL: 10 * time.Second, Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 4}}})
	ctl := c.Controllers[0].URL
	corral := func(wantOK bool, args ...string) string {
		t.Helper()
		return runCorral(t, nil, wantOK, append(args, "--controller", ctl)...)
	}
	out := corral(true, "vm", "start", "--vmid", c.TemplateID, "--count", "2", "--wait")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 3 || !strings.Contains(out, "Started") || !strings.Contains(out, "127.0.0.1:") {
		t.Fatalf("start --wait printed %q", out)
	}
	var items []apiv1.InstanceListItem
	if err := json.Unmarshal([]byte(corral(true, "vm", "list", "--state", "Started", "--output", "json")), &items); err != nil || len(items) != 2 {
		t.Fatalf("list json: %v %+v", err, items)
	}
	if table := corral(true, "vm", "list"); !strings.Contains(table, items[0].InstanceID) || !strings.Contains(table, "INSTANCE") {
		t.Fatalf("list table %q", table)
	}
	if show := corral(true, "vm", "show", items[0].InstanceID); !strings.Contains(show, "Started") || !strings.Contains(show, "ssh") {
		t.Fatalf("show %q", show)
	}
	// The 8 characters the dashboard shows are enough.
	if show := corral(true, "vm", "show", items[0].InstanceID[:8]); !strings.Contains(show, items[0].InstanceID) {
		t.Fatalf("show by id prefix %q", show)
	}
	if msg := corral(false, "vm", "show", "nope"); !strings.Contains(msg, `no instance "nope"`) || strings.Contains(msg, "HTTP 200") {
		t.Fatalf("show unknown %q", msg)
	}
	if msg := corral(false, "vm", "start", "--vmid", "not-a-template"); !strings.Contains(msg, `no template "not-a-template"; known: test-template`) {
		t.Fatalf("start unknown %q", msg)
	}
	if got := corral(true, "vm", "terminate", "--all", "--state", "Started"); len(strings.Fields(got)) != 2 {
		t.Fatalf("terminate --all printed %q", got)
	}
	for _, it := range items {
		c.WaitState(it.InstanceID, apiv1.StateTerminated, 10*time.Second)
	}
	// More than the node's 4 slots: --wait says why the fifth waits, as it
	// waits and when it gives up (it waited 10 silent minutes).
	if msg := corral(false, "vm", "start", "--vmid", c.TemplateID, "--count", "5", "--wait", "--timeout", "15s"); !strings.Contains(msg, "Scheduling: the only active node is at capacity") ||
		!strings.Contains(msg, "(the only active node is at capacity): context deadline exceeded") {
		t.Fatalf("start --wait past capacity said %q", msg)
	}
	for _, id := range strings.Fields(corral(true, "vm", "terminate", "--all")) {
		c.WaitState(id, apiv1.StateTerminated, time.Minute)
	}

	// Nodes and groups.
	var nodes []apiv1.Node
	if err := json.Unmarshal([]byte(corral(true, "node", "list", "--output", "json")), &nodes); err != nil || len(nodes) != 1 {
		t.Fatalf("node list: %v %+v", err, nodes)
	}
	id := nodes[0].NodeID
	if table := corral(true, "node", "list"); !strings.Contains(table, "n1") || !strings.Contains(table, "0/4") {
		t.Fatalf("node table %q", table)
	}
	// Names where people type them (they answered "Not found (HTTP 200)").
	corral(true, "node", "drain", "n1")
	c.WaitNodeState(id, apiv1.NodeDrain, 5*time.Second)
	corral(true, "node", "undrain", id)
	corral(true, "node", "set-capacity", "n1", "6")
	if msg := corral(false, "node", "drain", "n9"); !strings.Contains(msg, `no node "n9"; known: n1 (`+id+`)`) {
		t.Fatalf("drain of an unknown node %q", msg)
	}
	if show := corral(true, "node", "show", "n1"); !strings.Contains(show, `"capacity": 6`) || !strings.Contains(show, `"state": "Active"`) {
		t.Fatalf("node show %q", show)
	}
	gid := strings.TrimSpace(corral(true, "group", "create", "macs", "--description", "M2 minis"))
	corral(true, "group", "create", "spare", "--fallback", "macs")
	corral(true, "group", "add", "macs", "n1")
	named := corral(true, "vm", "start", "--vmid", "test-template", "--group", "macs", "--node", "n1", "--wait")
	if !strings.Contains(named, "Started") {
		t.Fatalf("start by names %q", named)
	}
	started := strings.Split(strings.TrimSpace(named), "\n") // a header, then the instance
	corral(true, "vm", "terminate", strings.Fields(started[len(started)-1])[0][:8])
	if table := corral(true, "node", "list"); !strings.Contains(table, "macs") {
		t.Fatalf("node not in group: %q", table)
	}
	corral(true, "group", "remove", gid, id)
	if gl := corral(true, "group", "list"); !strings.Contains(gl, "M2 minis") {
		t.Fatalf("group list %q", gl)
	}
	corral(true, "group", "delete", "spare")
	corral(true, "group", "delete", gid)
	if msg := corral(false, "node", "set-capacity", id, "many"); !strings.Contains(msg, "non-negative") {
		t.Fatalf("bad capacity %q", msg)
	}
	corral(true, "node", "disjoin", id)
	if got := corral(true, "node", "list", "--output", "json"); strings.Contains(got, id) {
		t.Fatalf("disjoined node still listed: %s", got)
	}
}

// TestCLIContextEventsLogs: `corral login` saves a context (owner-only) the
// other commands use without flags; a wrong token is refused at login;
// `vm logs` shows the script output and console, `vm restart --wait`
// restarts in place, `vm ssh --dry-run` names the endpoint, `events` lists
// and `events --follow` streams.
func TestCLIContextEventsLogs(t *testing.T) {
	const token = "cli-root-token"
	c := testenv.StartCluster(t, testenv.Options{Auth: controller.AuthConfig{Enabled: true, RootToken: token},
		Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 4}}})
	ctl := c.Controllers[0].URL
	cfg := filepath.Join(t.TempDir(), "corral", "config.json")
	env := append(os.Environ(), "CORRAL_CONFIG="+cfg)
	corral := func(wantOK bool, args ...string) string {
		t.Helper()
		return runCorral(t, env, wantOK, args...)
	}
	if msg := corral(false, "login", ctl, "--token", "wrong"); !strings.Contains(msg, "Authentication Required") {
		t.Fatalf("login with a wrong token: %q", msg)
	}
	if _, err := os.Stat(cfg); err == nil {
		t.Fatal("a refused login saved a context")
	}
	corral(true, "login", ctl, "--token", token, "--name", "lab")
	if fi, err := os.Stat(cfg); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("context file: %v %v", fi.Mode(), err)
	}
	if l := corral(true, "context", "list"); !strings.Contains(l, "* ") || !strings.Contains(l, "lab") || strings.Contains(l, token) {
		t.Fatalf("context list %q", l)
	}

	out := corral(true, "vm", "start", "--vmid", c.TemplateID, "--script", "echo hello from the script", "--wait", "--output", "json")
	var started []apiv1.Instance
	if err := json.Unmarshal([]byte(out), &started); err != nil || len(started) != 1 {
		t.Fatalf("start: %v %s", err, out)
	}
	id := started[0].InstanceID
	c.WaitState(id, apiv1.StateStarted, 10*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for {
		logs := corral(true, "vm", "logs", id)
		if strings.Contains(logs, "hello from the script") && strings.Contains(logs, "synthetic console: booting") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("vm logs %q", logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := corral(true, "vm", "restart", id, "--wait"); !strings.Contains(got, "Started") {
		t.Fatalf("restart --wait %q", got)
	}
	if got := corral(true, "vm", "ssh", id, "--dry-run", "--", "uname", "-a"); !strings.HasPrefix(got, "ssh -p ") || !strings.Contains(got, "anka@127.0.0.1 uname -a") {
		t.Fatalf("ssh --dry-run %q", got)
	}
	if got := corral(true, "events", "--instance", id); !strings.Contains(got, "instance.started") || !strings.Contains(got, "instance.restarted") {
		t.Fatalf("events %q", got)
	}
	if msg := corral(false, "events", "--type", "nonsense"); !strings.Contains(msg, "type:") {
		t.Fatalf("events bad type %q", msg)
	}

	// --follow prints what happens next, then keeps going until stopped.
	follow := exec.Command(corralBinary(t), "events", "--follow", "--type", "instance", "--output", "json")
	follow.Env = env
	stdout, err := follow.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	defer follow.Process.Kill()
	lines := make(chan apiv1.Event, 100)
	go func() {
		dec := json.NewDecoder(stdout)
		for {
			var ev apiv1.Event
			if dec.Decode(&ev) != nil {
				close(lines)
				return
			}
			lines <- ev
		}
	}()
	corral(true, "vm", "terminate", id)
	timeout := time.After(20 * time.Second)
	for {
		select {
		case ev, ok := <-lines:
			if !ok {
				t.Fatal("events --follow ended")
			}
			if ev.InstanceID == id && ev.Type == apiv1.EventInstanceTerminated {
				return
			}
		case <-timeout:
			t.Fatal("events --follow did not show the termination")
		}
	}
}

// TestCLISaveAndDistribute: `corral vm save --wait` saves a Started instance
// as a new tag, `corral template distribute --wait` puts it on the nodes.
func TestCLISaveAndDistribute(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Registry: true, Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 2}, {Name: "n2", Capacity: 2}}})
	rc, _ := client.NewRegistry(c.Registry.URL)
	ctx := context.Background()
	src := newVMDir(t, 0, 1)
	os.WriteFile(filepath.Join(src, "config.json"), []byte(fmt.Sprintf(`{"arch":%q}`, runtimeArch())), 0o644)
	base, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "base", Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	corral := func(args ...string) string {
		t.Helper()
		return runCorral(t, nil, true, append(args, "--controller", c.Controllers[0].URL)...)
	}
	id := strings.Fields(corral("vm", "start", "--vmid", base.TemplateID, "--wait"))[3]
	if got := corral("vm", "save", id, "--tag", "v2", "--description", "from the CLI", "--wait"); !strings.Contains(got, "saved as tag v2") {
		t.Fatalf("vm save %q", got)
	}
	d, err := c.Controllers[0].Service.Registry().GetTemplate(ctx, base.TemplateID)
	if err != nil || len(d.Versions) != 2 {
		t.Fatalf("after save: %v %+v", err, d.Versions)
	}
	if got := corral("template", "distribute", base.TemplateID, "--tag", "v2", "--wait"); !strings.Contains(got, "done on 2 node(s)") {
		t.Fatalf("distribute %q", got)
	}
}
