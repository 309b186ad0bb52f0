package client_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/retry"
	"github.com/corral-build/corral/internal/testenv"
	"github.com/corral-build/corral/internal/testenv/faultproxy"
)

// deadURL is a loopback address nothing listens on.
func deadURL(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

// TestControllerFailsOverAndStays: with the first controller unreachable a
// call goes to the next one, reads and writes alike (a refused connection
// never reached a server), and later calls start there.
func TestControllerFailsOverAndStays(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Nodes: []testenv.NodeOptions{{Name: "n", Capacity: 2}}})
	ctx := context.Background()
	live := c.Controllers[0].URL
	cl, err := client.New([]string{deadURL(t), live}, "")
	if err != nil {
		t.Fatal(err)
	}
	ids, err := cl.StartInstances(ctx, map[string]any{"vmid": c.TemplateID})
	if err != nil || len(ids) != 1 {
		t.Fatalf("a start with the first controller down: %v %v", ids, err)
	}
	if cl.URL() != live {
		t.Fatalf("the client uses %s after failing over, want %s", cl.URL(), live)
	}
	if _, err := cl.Instance(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Instance(ctx, "no-such-instance"); err == nil {
		t.Fatal("an unknown instance was found")
	}
}

// TestRetriesOnlyWhatIsSafe: a read answered 503 is tried again (per the
// policy); a start answered 503 is not (its answer may be lost after it
// ran: a retry could start twice), nor is any 4xx; the error keeps the
// server's status.
func TestRetriesOnlyWhatIsSafe(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Auth: controller.AuthConfig{Enabled: true, RootToken: "s3cret"}})
	ctx := context.Background()
	proxy := faultproxy.New(t, c.Controllers[0].URL)
	cl, err := client.New([]string{proxy.URL}, "")
	if err != nil {
		t.Fatal(err)
	}
	cl.UseRootToken("s3cret")
	cl.Retry = retry.Policy{Attempts: 3, Initial: time.Millisecond, Max: time.Millisecond, PerAttempt: 30 * time.Second}

	proxy.Set("/api/v1/vm", faultproxy.Fault{Status: http.StatusServiceUnavailable})
	if _, err := cl.Instances(ctx, ""); err == nil {
		t.Fatal("a list through a failing server succeeded")
	}
	if n := proxy.Hits("/api/v1/vm"); n != 3 {
		t.Fatalf("a failing list was tried %d times, want the policy's 3", n)
	}
	_, err = cl.StartInstances(ctx, map[string]any{"vmid": c.TemplateID})
	var fe *client.FailError
	if !errors.As(err, &fe) || fe.HTTPStatus != http.StatusServiceUnavailable {
		t.Fatalf("a start through a failing server: %v, want a FailError with 503", err)
	}
	if n := proxy.Hits("/api/v1/vm"); n != 4 {
		t.Fatalf("a failing start was sent %d times, want once", n-3)
	}
	proxy.Heal()

	cl.UseRootToken("wrong")
	if _, err := cl.Instances(ctx, ""); !errors.Is(err, client.ErrUnauthorized) {
		t.Fatalf("a wrong root token: %v, want ErrUnauthorized", err)
	}
	cl.UseRootToken("s3cret")
	proxy.Set("/api/v1/vm", faultproxy.Fault{Status: http.StatusBadRequest})
	if _, err := cl.Instances(ctx, ""); !errors.As(err, &fe) || fe.HTTPStatus != http.StatusBadRequest {
		t.Fatalf("a 400: %v", err)
	}
	if n := proxy.Hits("/api/v1/vm"); n != 5 {
		t.Fatalf("a 400 was tried %d times, want once", n-4)
	}
}

// TestWaitStateFollowsTheInstance: WaitState returns once the instance
// reaches the state; an instance that can no longer reach it (Terminated,
// Error) or does not exist ends the wait at once with its reason. It used
// to wait out its context and say "context deadline exceeded".
func TestWaitStateFollowsTheInstance(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Nodes: []testenv.NodeOptions{{Name: "n", Capacity: 1}}})
	// Bounded so the test fails, not hangs, where a wait would not end.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ids, err := c.Client.StartInstances(ctx, map[string]any{"vmid": c.TemplateID})
	if err != nil {
		t.Fatal(err)
	}
	in, err := c.Client.WaitState(ctx, ids[0], apiv1.StateStarted)
	if err != nil || in.State != apiv1.StateStarted {
		t.Fatalf("wait for Started: %+v %v", in, err)
	}
	if err := c.Client.Terminate(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if in, err := c.Client.WaitState(ctx, ids[0], apiv1.StateTerminated); err != nil || in.State != apiv1.StateTerminated {
		t.Fatalf("wait for Terminated: %+v %v", in, err)
	}
	if _, err := c.Client.WaitState(ctx, ids[0], apiv1.StateStarted); err == nil || !strings.Contains(err.Error(), "will not be Started") {
		t.Fatalf("waiting for a Terminated instance to start: %v", err)
	}
	if _, err := c.Client.WaitState(ctx, "no-such-instance", apiv1.StateStarted); err == nil || !strings.Contains(err.Error(), "no-such-instance") {
		t.Fatalf("waiting for an unknown instance: %v", err)
	}
	// The node fails it: Error is the end of the wait for Started.
	bad, err := c.Client.StartInstances(ctx, map[string]any{"vmid": c.TemplateID, "startup_script": "ZXhpdCA3", // exit 7
		"script_monitoring": true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.WaitState(ctx, bad[0], apiv1.StateStarted); err == nil || !strings.Contains(err.Error(), "exit code 7") {
		t.Fatalf("waiting for an instance whose script fails: %v, want its reason", err)
	}
}
