package node_test

import (
	"context"
	"encoding/base64"
	"strings"
	"sync"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/driver"
	"github.com/corral-build/corral/internal/driver/synthetic"
	"github.com/corral-build/corral/internal/testenv"
)

// recording is the synthetic driver, remembering each VM it started so a
// test can crash one.
type recording struct {
	*synthetic.Driver
	mu  sync.Mutex
	vms []driver.VM
}

func (r *recording) Start(ctx context.Context, spec driver.Spec) (driver.VM, error) {
	vm, err := r.Driver.Start(ctx, spec)
	if err == nil {
		r.mu.Lock()
		r.vms = append(r.vms, vm)
		r.mu.Unlock()
	}
	return vm, err
}

func (r *recording) started() []driver.VM {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]driver.VM(nil), r.vms...)
}

func script(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// TestInstanceLifecycleOnANode: a monitored startup script's result is
// reported with Started; a restart boots a new VM in the same slot and runs
// the script again; a VM that dies frees its slot at once (another
// instance starts on the one-slot node) and reads Error; a failing script
// fails the instance with its output; terminate ends each.
func TestInstanceLifecycleOnANode(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{})
	drv := &recording{Driver: synthetic.New(time.Millisecond)}
	c.StartNode(testenv.NodeOptions{Name: "life", Capacity: 1, Driver: drv})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := func(s string) string {
		t.Helper()
		ids, err := c.Client.StartInstances(ctx, map[string]any{"vmid": c.TemplateID, "startup_script": script(s),
			"script_monitoring": true, "script_timeout": 60})
		if err != nil {
			t.Fatal(err)
		}
		return ids[0]
	}

	id := start("echo out-$((6*7)); echo err >&2")
	in := c.WaitState(id, apiv1.StateStarted, time.Minute)
	if in.StartupScript == nil || strings.TrimSpace(in.StartupScript.Stdout) != "out-42" ||
		strings.TrimSpace(in.StartupScript.Stderr) != "err" || in.StartupScript.ReturnCode != 0 {
		t.Fatalf("script result %+v", in.StartupScript)
	}
	if len(drv.started()) != 1 {
		t.Fatalf("%d VMs started for one instance", len(drv.started()))
	}

	if err := c.Client.Restart(ctx, id); err != nil {
		t.Fatal(err)
	}
	for len(drv.started()) < 2 {
		select {
		case <-ctx.Done():
			t.Fatal("no new VM after a restart")
		case <-time.After(10 * time.Millisecond): // polling the driver
		}
	}
	c.WaitState(id, apiv1.StateStarted, time.Minute)

	// The VM dies: Error, and the node's only slot is free again.
	drv.started()[1].(interface{ Crash(error) }).Crash(errCrash)
	in = c.WaitState(id, apiv1.StateError, time.Minute)
	if !strings.Contains(in.Message, "exited unexpectedly") {
		t.Fatalf("a crashed VM reads %q", in.Message)
	}
	failing := start("echo broke; exit 3")
	in = c.WaitState(failing, apiv1.StateError, time.Minute)
	if !strings.Contains(in.Message, "exit code 3") || in.StartupScript == nil || strings.TrimSpace(in.StartupScript.Stdout) != "broke" {
		t.Fatalf("a failing script: %q %+v", in.Message, in.StartupScript)
	}
	for _, id := range []string{id, failing} {
		if err := c.Client.Terminate(ctx, id); err != nil {
			t.Fatal(err)
		}
		c.WaitState(id, apiv1.StateTerminated, time.Minute)
	}
	// script_fail_handler 1 keeps the failed VM (and its slot) for
	// inspection: a terminate then waits for the node to destroy it and
	// confirm.
	ids, err := c.Client.StartInstances(ctx, map[string]any{"vmid": c.TemplateID, "startup_script": script("exit 4"),
		"script_monitoring": true, "script_fail_handler": 1})
	if err != nil {
		t.Fatal(err)
	}
	kept := c.WaitState(ids[0], apiv1.StateError, time.Minute)
	if !strings.Contains(kept.Message, "exit code 4") {
		t.Fatalf("a kept failed VM reads %q", kept.Message)
	}
	if err := c.Client.Terminate(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	c.WaitState(ids[0], apiv1.StateTerminated, time.Minute)
}

var errCrash = errorString("the hypervisor killed it")

type errorString string

func (e errorString) Error() string { return string(e) }
