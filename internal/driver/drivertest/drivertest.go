// Package drivertest is the conformance suite every VM driver passes:
// start, report info with an SSH endpoint, run a script with its exit code
// and output (and time it out), stop, destroy, survive an agent restart,
// and save an instance as a template that starts again.
package drivertest

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/driver"
)

// Setup is one driver under test.
type Setup struct {
	// New returns a driver on the host's state; called again to stand for
	// a restarted agent.
	New func(t *testing.T) driver.Driver
	// Spec returns the spec of an instance of the test template.
	Spec func(t *testing.T, instanceID string) driver.Spec
	// VMs lists the VMs the driver's tool holds on the host (by name);
	// nil when the driver keeps none outside the agent's process.
	VMs func(t *testing.T) []string
	// Saved returns the spec of an instance of a template saved from an
	// instance (Saver: dir holds the files; Pusher: template and tag).
	Saved func(t *testing.T, instanceID, dir, template, tag string) driver.Spec
	// Timeout bounds one boot (default 2 minutes).
	Timeout time.Duration
	// GuestSSHPort is the guests' sshd port (default 22).
	GuestSSHPort int
}

// Run runs the suite.
func Run(t *testing.T, s Setup) {
	if s.Timeout == 0 {
		s.Timeout = 2 * time.Minute
	}
	if s.GuestSSHPort == 0 {
		s.GuestSSHPort = 22
	}
	d := s.New(t)
	parent := t // saved templates outlive the subtest that saves them
	var saved driver.Spec
	t.Run("Lifecycle", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*s.Timeout)
		defer cancel()
		vm, err := d.Start(ctx, s.Spec(t, "dt-1"))
		if err != nil {
			t.Fatal(err)
		}
		defer vm.Destroy(context.Background())
		info := vm.Info()
		if info.Status != "running" || info.IP == "" {
			t.Fatalf("info %+v: want running with an IP", info)
		}
		if len(info.PortForwarding) == 0 || info.PortForwarding[0].GuestPort != s.GuestSSHPort || info.PortForwarding[0].HostPort == 0 {
			t.Fatalf("port forwards %+v: want SSH (guest %d) first with a node port", info.PortForwarding, s.GuestSSHPort)
		}
		if s.VMs != nil && !contains(s.VMs(t), info.Name) {
			t.Fatalf("VM %s not on the host: %v", info.Name, s.VMs(t))
		}
		res, err := vm.RunScript(ctx, []byte("echo out; echo err >&2; exit 7"))
		if err != nil || res.Stdout != "out\n" || res.Stderr != "err\n" || res.ReturnCode != 7 || res.DidTimeout {
			t.Fatalf("script: %+v %v", res, err)
		}
		tctx, tcancel := context.WithTimeout(ctx, 2*time.Second)
		res, err = vm.RunScript(tctx, []byte("sleep 60"))
		tcancel()
		if err != nil || !res.DidTimeout {
			t.Fatalf("script past its timeout: %+v %v", res, err)
		}
		if saver, ok := vm.(driver.Saver); ok && s.Saved != nil {
			if _, err := vm.RunScript(ctx, []byte("echo saved > marker")); err != nil {
				t.Fatal(err)
			}
			dir := parent.TempDir()
			if _, err := saver.Save(ctx, dir, false); err != nil {
				t.Fatalf("save: %v", err)
			}
			saved = s.Saved(t, "dt-saved", dir, "", "")
		} else if pusher, ok := vm.(driver.Pusher); ok && s.Saved != nil {
			id, _, err := pusher.Push(ctx, "drivertest-saved", "v1", nil)
			if err != nil {
				t.Fatalf("push: %v", err)
			}
			saved = s.Saved(t, "dt-saved", id, "drivertest-saved", "v1")
		}
		if err := vm.Stop(ctx); err != nil {
			t.Fatalf("stop: %v", err)
		}
		if st := vm.Info().Status; st != "stopped" {
			t.Fatalf("status after stop %q", st)
		}
		select {
		case <-vm.Done():
			if vm.Err() != nil {
				t.Fatalf("a requested stop reported as a failure: %v", vm.Err())
			}
		default:
		}
		if err := vm.Destroy(ctx); err != nil {
			t.Fatalf("destroy: %v", err)
		}
		if s.VMs != nil && contains(s.VMs(t), info.Name) {
			t.Fatalf("VM %s left after destroy", info.Name)
		}
		if c, err := net.DialTimeout("tcp", net.JoinHostPort(hostOf(info.HostIP), strconv.Itoa(info.PortForwarding[0].HostPort)), time.Second); err == nil {
			c.Close()
			t.Fatal("SSH port still open after destroy")
		}
	})
	t.Run("SavedStarts", func(t *testing.T) {
		if saved.InstanceID == "" {
			t.Skip("the driver cannot save instances")
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.Timeout)
		defer cancel()
		vm, err := d.Start(ctx, saved)
		if err != nil {
			t.Fatal(err)
		}
		defer vm.Destroy(context.Background())
		if res, err := vm.RunScript(ctx, []byte("echo ok")); err != nil || res.Stdout != "ok\n" {
			t.Fatalf("script in the saved template: %+v %v", res, err)
		}
	})
	t.Run("AgentRestart", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*s.Timeout)
		defer cancel()
		vm, err := d.Start(ctx, s.Spec(t, "dt-2"))
		if err != nil {
			t.Fatal(err)
		}
		name := vm.Info().Name
		// The agent dies: a new driver on the same host, which must not
		// leave the old VM holding a slot, and must start new ones.
		d2 := s.New(t)
		if sw, ok := d2.(driver.Sweeper); ok {
			if err := sw.Sweep(ctx); err != nil {
				t.Fatalf("sweep: %v", err)
			}
			if s.VMs != nil && contains(s.VMs(t), name) {
				t.Fatalf("VM %s of the earlier agent left after the sweep", name)
			}
		} else {
			defer vm.Destroy(context.Background())
			if s.VMs != nil {
				t.Fatal("the driver keeps VMs outside the agent but is no driver.Sweeper")
			}
		}
		vm2, err := d2.Start(ctx, s.Spec(t, "dt-3"))
		if err != nil {
			t.Fatalf("start after restart: %v", err)
		}
		if res, err := vm2.RunScript(ctx, []byte("echo again")); err != nil || res.Stdout != "again\n" {
			t.Fatalf("script after restart: %+v %v", res, err)
		}
		if err := vm2.Destroy(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

func hostOf(ip string) string {
	if ip == "" || strings.HasPrefix(ip, "0.") {
		return "127.0.0.1"
	}
	return ip
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
