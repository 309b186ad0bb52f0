package events_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/events"
	"github.com/corral-build/corral/internal/store"
	"github.com/corral-build/corral/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestTrimCostsWhatItDeletes: keeping the log within its bound reads no
// range over the whole log once the recorder runs (etcd visits every key of
// such a range, so trimming cost two passes over the log each time), and
// the log still keeps its newest events within the bound.
func TestTrimCostsWhatItDeletes(t *testing.T) {
	cli := testenv.NewEtcdClient(t)
	st := store.New(cli.Client, "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const maxCount = 50
	rec := events.NewRecorder(st, events.Config{MaxCount: maxCount}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	fence := clientv3.Compare(clientv3.CreateRevision("leader"), "=", 0) // holds throughout
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); rec.Run(runCtx, fence) }()
	defer func() { stop(); <-done }()

	enqueue := func(from, n int) {
		for i := from; i < from+n; i++ {
			if err := st.EnqueueEvent(ctx, apiv1.Event{Type: apiv1.EventAuthFailed, Message: "m" + string(rune('a'+i%26)), Time: time.Now().UTC()}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// waitLog waits until the queue is drained into the log and the log
	// is back within its bound (trimmed each max(10, maxCount/20) written:
	// at most that many past it, plus the batch that crossed it). Its own
	// reads span the log's keys ("events/0"...), not its whole prefix.
	waitLog := func() int64 {
		for deadline := time.Now().Add(30 * time.Second); ; {
			q, err := cli.Get(ctx, st.EventQueuePrefix(), clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err != nil {
				t.Fatal(err)
			}
			l, err := cli.Get(ctx, st.EventsPrefix()+"0", clientv3.WithRange(clientv3.GetPrefixRangeEnd(st.EventsPrefix())), clientv3.WithCountOnly())
			if err != nil {
				t.Fatal(err)
			}
			if q.Count == 0 && l.Count <= maxCount+10+100 {
				return l.Count
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d queued, %d in the log", q.Count, l.Count)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	enqueue(0, 20)
	waitLog()
	before := cli.RangesOver(st.EventsPrefix())
	enqueue(20, 300)
	n := waitLog()
	if got := cli.RangesOver(st.EventsPrefix()) - before; got != 0 {
		t.Errorf("%d reads of the whole log while recording and trimming 300 events, want 0", got)
	}
	if n < maxCount {
		t.Fatalf("log holds %d events, want at least %d", n, maxCount)
	}
	// The newest are kept: the last event queued is in the log.
	evs, err := st.ListEvents(ctx, store.EventQuery{Limit: 1})
	if err != nil || len(evs) != 1 || evs[0].Message != "m"+string(rune('a'+319%26)) {
		t.Fatalf("newest event %+v (%v), want the last queued", evs, err)
	}
}
