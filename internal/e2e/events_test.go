package e2e

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// eventTypes lists the types of evs, in order.
func eventTypes(evs []apiv1.Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Type)
	}
	return out
}

// waitEvents polls GET /api/v1/events?q until cond holds.
func waitEvents(t *testing.T, cl *client.Controller, q url.Values, cond func([]apiv1.Event) bool) []apiv1.Event {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := contextWithTimeout(5 * time.Second)
		evs, err := cl.Events(ctx, q)
		cancel()
		if err == nil && cond(evs) {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("events %v: %v, last %v", q, err, eventTypes(evs))
		}
		time.Sleep(50 * time.Millisecond) // polling a condition with a deadline
	}
}

func has(types ...string) func([]apiv1.Event) bool {
	return func(evs []apiv1.Event) bool {
		got := eventTypes(evs)
		for _, t := range types {
			if !slices.Contains(got, t) {
				return false
			}
		}
		return true
	}
}

// TestEventLog: an instance's lifecycle and a node's drain are recorded in
// order, each once; the log survives a controller restart without gaps or
// repeats; filters and the stream work; bad queries get FAIL naming the field.
func TestEventLog(t *testing.T) {
	begin := time.Now().UTC().Add(-time.Second)
	c := testenv.StartCluster(t, testenv.Options{Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 2}}})
	ctx, cancel := contextWithTimeout(time.Minute)
	defer cancel()

	// A follower sees the instance events recorded since the test began,
	// in order. (It followed "from now on", and missed instance.requested
	// when its request reached the controller after the start, on a busy
	// machine.)
	var mu sync.Mutex
	var streamed []apiv1.Event
	fctx, fcancel := context.WithCancel(ctx)
	followDone := make(chan error, 1)
	go func() {
		q := url.Values{"type": {"instance"}, "since": {begin.Format(time.RFC3339)}}
		followDone <- c.Client.FollowEvents(fctx, q, func(ev apiv1.Event) error {
			mu.Lock()
			streamed = append(streamed, ev)
			mu.Unlock()
			return nil
		})
	}()

	ids, err := c.Client.StartInstances(ctx, map[string]any{"vmid": c.TemplateID})
	if err != nil {
		t.Fatal(err)
	}
	id := ids[0]
	c.WaitState(id, apiv1.StateStarted, 20*time.Second)
	if err := c.Client.Terminate(ctx, id); err != nil {
		t.Fatal(err)
	}
	c.WaitState(id, apiv1.StateTerminated, 20*time.Second)
	want := []string{apiv1.EventInstanceRequested, apiv1.EventInstancePlaced, apiv1.EventInstancePulling,
		apiv1.EventInstanceStarted, apiv1.EventInstanceTerminating, apiv1.EventInstanceTerminated}
	q := url.Values{"instance_id": {id}}
	evs := waitEvents(t, c.Client, q, has(apiv1.EventInstanceTerminated))
	if got := eventTypes(evs); !slices.Equal(got, want) {
		t.Fatalf("instance events %v, want %v", got, want)
	}
	for i := 1; i < len(evs); i++ {
		a, _ := apiv1.ParseEventID(evs[i-1].ID)
		b, _ := apiv1.ParseEventID(evs[i].ID)
		if !a.Less(b) {
			t.Fatalf("events out of order: %s then %s", evs[i-1].ID, evs[i].ID)
		}
	}
	if evs[1].NodeID == "" || evs[0].TemplateID != c.TemplateID {
		t.Fatalf("events lack their node or template: %+v", evs[:2])
	}

	nodeID := c.Nodes()[0].Agent.ID()
	if err := c.Client.ConfigureNode(ctx, map[string]any{"node_id": nodeID, "drain_mode": true}); err != nil {
		t.Fatal(err)
	}
	c.StartNode(testenv.NodeOptions{Name: "n2", Capacity: 1})
	waitEvents(t, c.Client, url.Values{"type": {"node"}}, has(apiv1.EventNodeJoined, apiv1.EventNodeDrained))

	// The stream saw the same instance events, in the same order.
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		got := eventTypes(streamed)
		mu.Unlock()
		if slices.Equal(got, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("streamed %v, want %v", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
	fcancel()
	<-followDone

	// A controller restart loses nothing and repeats nothing, and recording
	// goes on under the new one.
	before := waitEvents(t, c.Client, url.Values{"limit": {"1000"}}, has(apiv1.EventNodeDrained))
	c.Controllers[0].Close()
	c2 := c.StartController(testenv.Options{})
	cl2, err := client.New([]string{c2.URL}, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := cl2.ConfigureNode(ctx, map[string]any{"node_id": nodeID, "drain_mode": false}); err != nil {
		t.Fatal(err)
	}
	after := waitEvents(t, cl2, url.Values{"limit": {"1000"}}, has(apiv1.EventNodeUndrained))
	seen := map[string]bool{}
	for _, e := range after {
		if seen[e.ID] {
			t.Fatalf("event %s twice", e.ID)
		}
		seen[e.ID] = true
	}
	for _, e := range before {
		if !seen[e.ID] {
			t.Fatalf("event %s (%s) lost over the restart", e.ID, e.Type)
		}
	}
	n := 0
	for _, e := range after {
		if e.InstanceID == id {
			n++
		}
	}
	if n != len(want) {
		t.Fatalf("after the restart the instance has %d events, want %d", n, len(want))
	}
	if !slices.Contains(eventTypes(after), apiv1.EventSchedulerLeader) {
		t.Fatalf("no leader event in %v", eventTypes(after))
	}

	// Bad queries: 200 FAIL naming the field, as every bad input.
	for _, bad := range []string{"limit=0", "limit=5000", "since=yesterday", "type=bogus", "follow=maybe"} {
		code, env := call(t, "GET", c2.URL+"/api/v1/events?"+bad, "", "")
		if msg, _ := env["message"].(string); code != http.StatusOK || env["status"] != "FAIL" || !strings.HasPrefix(msg, strings.SplitN(bad, "=", 2)[0]+":") {
			t.Fatalf("GET /api/v1/events?%s: HTTP %d %v", bad, code, env)
		}
	}
}

// TestEventWebhook: every event reaches the webhook once it answers, in
// order, signed, although it failed its first deliveries; a failing
// webhook holds up no scheduling meanwhile.
func TestEventWebhook(t *testing.T) {
	const secret = "hook-secret"
	var mu sync.Mutex
	var got []apiv1.Event
	failures := 3
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		m := hmac.New(sha256.New, []byte(secret))
		m.Write(body)
		if r.Header.Get("X-Corral-Signature") != "sha256="+hex.EncodeToString(m.Sum(nil)) {
			t.Errorf("bad signature %q", r.Header.Get("X-Corral-Signature"))
		}
		mu.Lock()
		defer mu.Unlock()
		if failures > 0 {
			failures--
			http.Error(w, "not now", http.StatusServiceUnavailable)
			return
		}
		var b struct{ Events []apiv1.Event }
		if err := json.Unmarshal(body, &b); err != nil {
			t.Errorf("webhook body: %v", err)
		}
		got = append(got, b.Events...)
	}))
	defer hook.Close()
	c := testenv.StartCluster(t, testenv.Options{EventWebhook: hook.URL, EventWebhookSecret: secret,
		Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 2}}})
	ctx, cancel := contextWithTimeout(time.Minute)
	defer cancel()
	ids, err := c.Client.StartInstances(ctx, map[string]any{"vmid": c.TemplateID})
	if err != nil {
		t.Fatal(err)
	}
	c.WaitState(ids[0], apiv1.StateStarted, 20*time.Second) // while the hook fails
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		types := map[string]string{}
		for _, e := range got {
			if e.InstanceID == ids[0] {
				types[e.Type] = e.ID
			}
		}
		var order []apiv1.Event
		order = append(order, got...)
		mu.Unlock()
		if types[apiv1.EventInstanceStarted] != "" {
			for i := 1; i < len(order); i++ {
				a, _ := apiv1.ParseEventID(order[i-1].ID)
				b, _ := apiv1.ParseEventID(order[i].ID)
				if !a.Less(b) {
					t.Fatalf("webhook got %s after %s", order[i].ID, order[i-1].ID)
				}
			}
			if types[apiv1.EventInstanceRequested] == "" {
				t.Fatalf("webhook missed the request: %v", eventTypes(order))
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("webhook got %v", eventTypes(order))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestEventLogBounded: the log keeps at most its configured count.
func TestEventLogBounded(t *testing.T) {
	const max = 100
	c := testenv.StartCluster(t, testenv.Options{EventMaxCount: max, Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 1}}})
	ctx, cancel := contextWithTimeout(2 * time.Minute)
	defer cancel()
	nodeID := c.Nodes()[0].Agent.ID()
	for i := range 150 {
		if err := c.Client.ConfigureNode(ctx, map[string]any{"node_id": nodeID, "drain_mode": i%2 == 0}); err != nil {
			t.Fatal(err)
		}
	}
	evs := waitEvents(t, c.Client, url.Values{"limit": {"1000"}}, func(evs []apiv1.Event) bool {
		n := 0
		for _, e := range evs {
			if e.Type == apiv1.EventNodeDrained || e.Type == apiv1.EventNodeUndrained {
				n++
			}
		}
		return n > 50 && evs[len(evs)-1].Type == apiv1.EventNodeUndrained
	})
	// Trimmed each time max(10, max/20) were written: at most that many
	// past the bound, plus the batch that crossed it (one event here).
	if bound := max + 10 + 1; len(evs) > bound {
		t.Fatalf("log holds %d events, bound %d", len(evs), bound)
	}
}

// TestAuthFailureEvents: refused requests are recorded, a flood from one
// address as one event a minute.
func TestAuthFailureEvents(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Auth: controller.AuthConfig{Enabled: true, RootToken: "root-secret"}})
	for range 20 {
		req, _ := http.NewRequest("GET", c.Controllers[0].URL+"/api/v1/vm", nil)
		req.SetBasicAuth("root", "guess")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("bad password: HTTP %d", resp.StatusCode)
		}
	}
	evs := waitEvents(t, c.Client, url.Values{"type": {"auth"}}, has(apiv1.EventAuthFailed))
	if len(evs) != 1 || !strings.Contains(evs[0].Message, "127.0.0.1") || strings.Contains(evs[0].Message, "guess") {
		t.Fatalf("auth events %+v", evs)
	}
}

// TestTemplateEvents: pushing a tag and deleting one are recorded, from the
// registry itself (pushes do not pass through the controller).
func TestTemplateEvents(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Registry: true})
	ctx, cancel := contextWithTimeout(time.Minute)
	defer cancel()
	// The recorder's first look at the registry is its baseline.
	waitEvents(t, c.Client, url.Values{"type": {"scheduler"}}, has(apiv1.EventSchedulerLeader))
	// Wait for the baseline (the empty registry) to be stored.
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.Etcd.ClientURL}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	for {
		resp, err := cli.Get(ctx, "/corral/config/events-templates")
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 1 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("no template baseline")
		case <-time.After(20 * time.Millisecond):
		}
	}
	rc, _ := client.NewRegistry(c.Registry.URL)
	src := newVMDir(t, 0, 1)
	res, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "evt", Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "evt", Tag: "v2"}); err != nil {
		t.Fatal(err)
	}
	evs := waitEvents(t, c.Client, url.Values{"type": {"template"}}, func(evs []apiv1.Event) bool { return len(evs) >= 2 })
	for _, e := range evs {
		if e.Type != apiv1.EventTemplatePushed || e.TemplateID != res.TemplateID {
			t.Fatalf("template events %+v", evs)
		}
	}
	if err := c.Controllers[0].Service.Registry().DeleteTemplate(ctx, res.TemplateID, "v1"); err != nil {
		t.Fatal(err)
	}
	waitEvents(t, c.Client, url.Values{"type": {apiv1.EventTemplateDeleted}}, func(evs []apiv1.Event) bool {
		return len(evs) == 1 && evs[0].Tag == "v1"
	})
}
