package scheduler_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/scheduler"
	"github.com/corral-build/corral/internal/store"
	"github.com/corral-build/corral/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// waitUntil polls cond (a read of etcd) until it holds, for at most a minute.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within a minute", what)
		}
		time.Sleep(20 * time.Millisecond) // polling etcd, not ordering anything
	}
}

// leaders records which scheduler leads, from WhileLeading.
type leaders struct {
	mu      sync.Mutex
	current map[string]context.Context
	all     []string
}

func (l *leaders) whileLeading(id string) func(context.Context, clientv3.Cmp) {
	return func(ctx context.Context, _ clientv3.Cmp) {
		l.mu.Lock()
		l.current[id] = ctx
		l.all = append(l.all, id)
		l.mu.Unlock()
	}
}

// leading is the ids whose leadership has not ended.
func (l *leaders) leading() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for id, ctx := range l.current {
		if ctx.Err() == nil {
			out = append(out, id)
		}
	}
	return out
}

// TestRunLeadsAndHandsOver: of two schedulers on one etcd exactly one leads
// (WhileLeading runs for it, its election is recorded as an event); it
// places work as soon as it is written (the watch, not the periodic pass)
// and purges what finished longer than the retention ago. A graceful stop
// resigns: the other leads at once, well before the session TTL, and
// places the next work.
func TestRunLeadsAndHandsOver(t *testing.T) {
	cli, st := testenv.StoreAt(t, "")
	ctx := context.Background()
	if _, err := st.JoinNode(ctx, apiv1.NodeReport{NodeID: "n1", NodeName: "n1", Capacity: 4}, nil, 60); err != nil {
		t.Fatal(err)
	}
	l := &leaders{current: map[string]context.Context{}}
	run := func(id string) (*scheduler.Scheduler, context.CancelFunc, chan struct{}) {
		_, own := testenv.StoreAt(t, cli.Endpoints()[0])
		// A session TTL of ten minutes: a hand-over within the wait's
		// minute is the resign's, not the lease's expiry.
		s := scheduler.New(own, scheduler.Config{ID: id, SessionTTL: 600, Retention: time.Second,
			WhileLeading: l.whileLeading(id)}, testenv.Logger(t))
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { s.Run(rctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		return s, cancel, done
	}
	_, stopA, doneA := run("a")
	_, stopB, doneB := run("b")
	waitUntil(t, "a leader", func() bool { return len(l.leading()) == 1 })
	first := l.leading()[0]

	start := func(id string) {
		t.Helper()
		if err := st.CreateInstances(ctx, []store.InstanceRecord{{Instance: apiv1.Instance{InstanceID: id,
			State: apiv1.StateScheduling, VMID: "t", Tag: "v1", Arch: apiv1.ArchARM64, CrTime: time.Now().UTC()}}}); err != nil {
			t.Fatal(err)
		}
	}
	placed := func(id string) func() bool {
		return func() bool {
			r, err := st.GetInstance(ctx, id)
			return err == nil && r.NodeID == "n1" && r.SlotHeld
		}
	}
	start("i1")
	waitUntil(t, "i1 placed by the leader", placed("i1"))

	// Finished longer ago than the retention: purged by the leader.
	old := time.Now().Add(-time.Hour).UTC()
	if err := st.CreateInstances(ctx, []store.InstanceRecord{{Instance: apiv1.Instance{InstanceID: "done",
		State: apiv1.StateTerminated, VMID: "t", Tag: "v1", CrTime: old}, FinishedAt: old}}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the finished instance purged", func() bool {
		_, err := st.GetInstance(ctx, "done")
		return err != nil
	})

	// The leader stops: the other leads at once (the leader resigned).
	if first == "a" {
		stopA()
		<-doneA
	} else {
		stopB()
		<-doneB
	}
	second := map[string]string{"a": "b", "b": "a"}[first]
	waitUntil(t, "the other scheduler leading", func() bool {
		ids := l.leading()
		return len(ids) == 1 && ids[0] == second
	})
	start("i2")
	waitUntil(t, "i2 placed by the new leader", placed("i2"))

	// Each election is recorded as an event.
	resp, err := cli.Get(ctx, st.Key("eventq/"), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var msgs []string
	for _, kv := range resp.Kvs {
		msgs = append(msgs, string(kv.Value))
	}
	all := strings.Join(msgs, "\n")
	for _, id := range []string{first, second} {
		if !strings.Contains(all, "scheduler leader is "+id) {
			t.Errorf("no leader event for %s in:\n%s", id, all)
		}
	}
}
