package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/store"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestAuthRecords: API keys, their sessions and handshakes, and dashboard
// sessions: stored, read back, single-use where they should be, and a
// deleted key takes its sessions and pending handshakes with it in the
// same transaction.
func TestAuthRecords(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	if err := st.PutAPIKey(ctx, "ci", "PEM-CI"); err != nil {
		t.Fatal(err)
	}
	if err := st.PutAPIKey(ctx, "ops", "PEM-OPS"); err != nil {
		t.Fatal(err)
	}
	if pem, err := st.APIKey(ctx, "ci"); err != nil || pem != "PEM-CI" {
		t.Fatalf("key: %q %v", pem, err)
	}
	if ids, err := st.APIKeys(ctx); err != nil || len(ids) != 2 || ids[0] != "ci" || ids[1] != "ops" {
		t.Fatalf("keys: %v %v", ids, err)
	}
	if err := st.PutKeySession(ctx, "ci", "s1", "hash-1", time.Minute); err != nil {
		t.Fatal(err)
	}
	ref := store.KeySessionRef("ci", "s1")
	if h, err := st.KeySession(ctx, ref); err != nil || h != "hash-1" {
		t.Fatalf("session: %q %v", h, err)
	}
	if _, err := st.KeySession(ctx, "apikeys/ci"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a ref outside the sessions read %v", err)
	}
	if err := st.PutHandshake(ctx, "ci", "secret-hash", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := st.TakeHandshake(ctx, "ci", "secret-hash"); err != nil {
		t.Fatal(err)
	}
	if err := st.TakeHandshake(ctx, "ci", "secret-hash"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a handshake taken twice: %v", err)
	}
	if err := st.PutHandshake(ctx, "ci", "pending", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteAPIKey(ctx, "ci"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.KeySession(ctx, ref); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a deleted key's session: %v", err)
	}
	if err := st.TakeHandshake(ctx, "ci", "pending"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a deleted key's pending handshake: %v", err)
	}
	if err := st.DeleteAPIKey(ctx, "ci"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a second delete: %v", err)
	}
	if _, err := st.APIKey(ctx, "ci"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a deleted key: %v", err)
	}

	if err := st.PutDashboardSession(ctx, "cookie-hash", `{"user":"ops"}`, time.Minute); err != nil {
		t.Fatal(err)
	}
	if v, err := st.DashboardSession(ctx, "cookie-hash"); err != nil || v != `{"user":"ops"}` {
		t.Fatalf("dashboard session: %q %v", v, err)
	}
	if err := st.DeleteDashboardSession(ctx, "cookie-hash"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.DashboardSession(ctx, "cookie-hash"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a logged-out session: %v", err)
	}
	if err := st.DeleteDashboardSession(ctx, "cookie-hash"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a second log-out: %v", err)
	}
}

// TestGroupRecords: a group id is created once; updates and deletes reach
// only what exists.
func TestGroupRecords(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	g := apiv1.Group{ID: "g1", Name: "fast"}
	if err := st.CreateGroup(ctx, g); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateGroup(ctx, apiv1.Group{ID: "g1", Name: "other"}); err == nil {
		t.Fatal("a group id created twice")
	}
	if got, err := st.GetGroup(ctx, "g1"); err != nil || got.Name != "fast" {
		t.Fatalf("get: %+v %v", got, err)
	}
	if got, err := st.UpdateGroup(ctx, "g1", func(g *apiv1.Group) error { g.Description = "M2"; return nil }); err != nil || got.Description != "M2" {
		t.Fatalf("update: %+v %v", got, err)
	}
	refused := errors.New("refused")
	if _, err := st.UpdateGroup(ctx, "g1", func(g *apiv1.Group) error { g.Name = "x"; return refused }); !errors.Is(err, refused) {
		t.Fatalf("an update its function refused: %v", err)
	}
	if got, _ := st.GetGroup(ctx, "g1"); got.Name != "fast" {
		t.Fatalf("a refused update was written: %+v", got)
	}
	if _, err := st.UpdateGroup(ctx, "nope", func(*apiv1.Group) error { return nil }); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("update of an unknown group: %v", err)
	}
	if err := st.DeleteGroup(ctx, "g1"); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteGroup(ctx, "g1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a second delete: %v", err)
	}
	if gs, err := st.ListGroups(ctx); err != nil || len(gs) != 0 {
		t.Fatalf("groups after delete: %+v %v", gs, err)
	}
}

// TestEventQueueAndCursors: queued events are found by the recorder from
// the oldest; the webhook cursor and the seen templates are written only
// while the writer's fence holds.
func TestEventQueueAndCursors(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	if rev, err := st.OldestQueuedEvent(ctx); err != nil || rev != 0 {
		t.Fatalf("an empty queue: %d %v", rev, err)
	}
	if err := st.EnqueueEvent(ctx, apiv1.Event{Type: apiv1.EventSchedulerLeader, Message: "first"}); err != nil {
		t.Fatal(err)
	}
	first, err := st.OldestQueuedEvent(ctx)
	if err != nil || first <= 0 {
		t.Fatalf("oldest: %d %v", first, err)
	}
	if err := st.EnqueueEvent(ctx, apiv1.Event{Type: apiv1.EventSchedulerLeader, Message: "second"}); err != nil {
		t.Fatal(err)
	}
	if again, _ := st.OldestQueuedEvent(ctx); again != first {
		t.Fatalf("oldest after a second event: %d, want %d", again, first)
	}
	if !st.IsEventKey(st.EventQueuePrefix()+"x") || !st.IsEventKey(st.EventsPrefix()+"x") || st.IsEventKey(st.Key("instances/x")) {
		t.Fatal("IsEventKey")
	}
	lost := clientv3.Compare(clientv3.CreateRevision(st.Key("election/nobody")), ">", 0)
	if err := st.SetWebhookCursor(ctx, lost, "e1"); !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("a cursor write without the fence: %v", err)
	}
	if err := st.SetWebhookCursor(ctx, always(t, st), "e2"); err != nil {
		t.Fatal(err)
	}
	if c, err := st.WebhookCursor(ctx); err != nil || c != "e2" {
		t.Fatalf("cursor: %q %v", c, err)
	}
	if _, ok, err := st.SeenTemplates(ctx); ok || err != nil {
		t.Fatalf("seen templates before any: %v %v", ok, err)
	}
	seen := map[string]store.SeenTemplate{"t": {LastPush: 7, Tags: []string{"v1"}}}
	if err := st.EnqueueTemplateEvents(ctx, lost, seen, nil); !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("template events without the fence: %v", err)
	}
	if err := st.EnqueueTemplateEvents(ctx, always(t, st), seen, []apiv1.Event{{Type: apiv1.EventTemplatePushed}}); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := st.SeenTemplates(ctx); !ok || err != nil || got["t"].LastPush != 7 {
		t.Fatalf("seen templates: %+v %v %v", got, ok, err)
	}
}

// TestNeverStarted: only an instance still being placed or pulled has
// certainly not begun its job.
func TestNeverStarted(t *testing.T) {
	for state, want := range map[string]bool{
		apiv1.StateScheduling: true, apiv1.StatePulling: true, apiv1.StateStarted: false,
		apiv1.StateError: false, apiv1.StateTerminating: false, apiv1.StateTerminated: false,
	} {
		if got := (store.InstanceRecord{Instance: apiv1.Instance{State: state}}).NeverStarted(); got != want {
			t.Errorf("%s: never started %v, want %v", state, got, want)
		}
	}
}

// TestJoinTokenInit: the first controller makes the token (etcd keeps its
// hash); the next finds it made; a cloud from before hashes has its
// plaintext token hashed once and gets it back to print.
func TestJoinTokenInit(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	hash := func(s string) string { return "h(" + s + ")" }
	tok, created, err := st.InitJoinToken(ctx, "fresh", hash)
	if err != nil || !created || tok != "fresh" {
		t.Fatalf("first init: %q %v %v", tok, created, err)
	}
	if h, err := st.JoinTokenHash(ctx); err != nil || h != "h(fresh)" {
		t.Fatalf("hash %q %v", h, err)
	}
	if tok, created, err := st.InitJoinToken(ctx, "other", hash); err != nil || created || tok != "" {
		t.Fatalf("second init: %q %v %v", tok, created, err)
	}
	old := newStore(t)
	if _, err := old.Client().Put(ctx, old.Key("config/join-token"), "plain"); err != nil {
		t.Fatal(err)
	}
	if tok, created, err := old.InitJoinToken(ctx, "fresh", hash); err != nil || created || tok != "plain" {
		t.Fatalf("migration: %q %v %v", tok, created, err)
	}
	if h, _ := old.JoinTokenHash(ctx); h != "h(plain)" {
		t.Fatalf("migrated hash %q", h)
	}
	if resp, _ := old.Client().Get(ctx, old.Key("config/join-token")); len(resp.Kvs) != 0 {
		t.Fatal("the plaintext token was kept")
	}
}

// TestConsoleKeptApart: an update that carries a console tail stores it
// beside the record (not in it), and a later update without one keeps it.
func TestConsoleKeptApart(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	if err := st.CreateInstances(ctx, []store.InstanceRecord{{Instance: apiv1.Instance{InstanceID: "i1", State: apiv1.StateStarted}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.UpdateInstance(ctx, "i1", func(r *store.InstanceRecord) (store.InstanceUpdate, error) {
		return store.InstanceUpdate{Console: "login: "}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.UpdateInstance(ctx, "i1", func(r *store.InstanceRecord) (store.InstanceUpdate, error) {
		r.Message = "later"
		return store.InstanceUpdate{}, nil
	}); err != nil {
		t.Fatal(err)
	}
	c, err := st.GetConsole(ctx, "i1")
	if err != nil || c.Text != "login: " || c.At.IsZero() {
		t.Fatalf("console %+v %v", c, err)
	}
}

// TestEventsCheckpointBeforeTheRecorder: on an etcd the event recorder never
// ran, the checkpoint is "none" and the revision to start from is now.
func TestEventsCheckpointBeforeTheRecorder(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	rev, ok, err := st.EventsCheckpoint(ctx)
	if err != nil || ok || rev <= 0 {
		t.Fatalf("checkpoint %d %v %v, want the current revision and no checkpoint", rev, ok, err)
	}
}

// TestViewSnapshotIsOrdered: the view's scheduling snapshot lists groups
// and nodes in id order, every time (the plan is deterministic).
func TestViewSnapshotIsOrdered(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, st := viewedStore(t, ctx)
	for _, id := range []string{"g3", "g1", "g2", "g5", "g4"} {
		if err := st.CreateGroup(ctx, apiv1.Group{ID: id, Name: id}); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"n3", "n1", "n2"} {
		if _, err := st.JoinNode(ctx, apiv1.NodeReport{NodeID: id, NodeName: id, Capacity: 1}, nil, 60); err != nil {
			t.Fatal(err)
		}
	}
	// Something to place: an idle cloud's snapshot copies no nodes.
	if err := st.CreateInstances(ctx, []store.InstanceRecord{{Instance: apiv1.Instance{InstanceID: "i1", State: apiv1.StateScheduling}}}); err != nil {
		t.Fatal(err)
	}
	waitView(t, ctx, st)
	for range 5 {
		snap, err := st.SchedulingSnapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var groups, nodes []string
		for _, g := range snap.Groups {
			groups = append(groups, g.ID)
		}
		for _, n := range snap.Nodes {
			nodes = append(nodes, n.Report.NodeID)
		}
		if strings.Join(groups, ",") != "g1,g2,g3,g4,g5" || strings.Join(nodes, ",") != "n1,n2,n3" {
			t.Fatalf("snapshot order: groups %v nodes %v", groups, nodes)
		}
	}
}

// TestIsUnavailable: etcd's timeouts and leader changes, wrapped or as the
// text a gRPC status carries, are "unavailable for now"; other errors not.
func TestIsUnavailable(t *testing.T) {
	for _, err := range []error{
		fmt.Errorf("create instances: %w", rpctypes.ErrTimeoutDueToLeaderFail),
		fmt.Errorf("x: %w", rpctypes.ErrTimeout),
		errors.New("rpc error: code = Unavailable desc = etcdserver: leader changed"),
		rpctypes.ErrNoLeader,
	} {
		if !store.IsUnavailable(err) {
			t.Errorf("%v: not unavailable", err)
		}
	}
	for _, err := range []error{nil, errors.New("boom"), store.ErrNotFound, rpctypes.ErrNoSpace} {
		if store.IsUnavailable(err) {
			t.Errorf("%v: unavailable", err)
		}
	}
}
