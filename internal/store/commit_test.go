package store

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestGroupCommitSharesOneRevision: transactions queued while another is
// in flight go to etcd as one, each deciding its own writes: one whose
// compare fails writes nothing and hears so, the others are one revision;
// one whose caller went away is not sent; two writing one key (which etcd
// refuses in one transaction) are committed one after the other.
func TestGroupCommitSharesOneRevision(t *testing.T) {
	cli := newEtcdClient(t)
	ctx := context.Background()
	g := &groupCommit{cli: cli}
	// Queue everything first, as if a commit were in flight.
	g.mu.Lock()
	g.running = groupInFlight
	g.mu.Unlock()
	put := func(k string) []clientv3.Op { return []clientv3.Op{clientv3.OpPut(k, "v")} }
	absent := func(k string) []clientv3.Cmp {
		return []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(k), "=", 0)}
	}
	if _, err := cli.Put(ctx, "taken", "x"); err != nil {
		t.Fatal(err)
	}
	gone, cancel := context.WithCancel(ctx)
	cancel()
	type result struct {
		ok  bool
		err error
	}
	results := make([]result, 12)
	var wg sync.WaitGroup
	for i := range results {
		var c context.Context = ctx
		cmps, ops := absent(fmt.Sprint("k", i)), put(fmt.Sprint("k", i))
		switch i {
		case 10:
			cmps, ops = absent("taken"), put("taken")
		case 11:
			c = gone
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, err := g.commit(c, cmps, ops)
			results[i] = result{ok, err}
		}()
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		g.mu.Lock()
		n := len(g.queue)
		g.mu.Unlock()
		if n == len(results) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d transactions queued", n, len(results))
		}
		time.Sleep(time.Millisecond) // polling the queue's length, bounded above
	}
	before, _ := cli.Get(ctx, "x")
	go g.loop() // as one of the loops ending its commit
	wg.Wait()
	after, _ := cli.Get(ctx, "x")
	if n := after.Header.Revision - before.Header.Revision; n != 1 {
		t.Errorf("10 queued transactions took %d revisions, want 1", n)
	}
	for i, r := range results {
		want := i < 10
		if i == 11 {
			if r.err == nil {
				t.Errorf("a caller gone before the commit: %+v", r)
			}
			continue
		}
		if r.err != nil || r.ok != want {
			t.Errorf("transaction %d: ok %v err %v, want ok %v", i, r.ok, r.err, want)
		}
	}
	if got, _ := cli.Get(ctx, "k11"); len(got.Kvs) != 0 {
		t.Error("the gone caller's write was sent")
	}

	// Two writes of one key in one queue: one after the other.
	for deadline := time.Now().Add(10 * time.Second); ; {
		g.mu.Lock()
		idle := g.running == groupInFlight-1
		if idle {
			g.running = groupInFlight // hold the queue again
		}
		g.mu.Unlock()
		if idle {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first shared commit's loop did not end")
		}
		time.Sleep(time.Millisecond)
	}
	var twice [2]result
	for i := range twice {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, err := g.commit(ctx, nil, []clientv3.Op{clientv3.OpPut("same", fmt.Sprint(i))})
			twice[i] = result{ok, err}
		}()
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		g.mu.Lock()
		n := len(g.queue)
		g.mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the two writes did not queue")
		}
		time.Sleep(time.Millisecond)
	}
	go g.loop()
	wg.Wait()
	for i, r := range twice {
		if !r.ok || r.err != nil {
			t.Errorf("write %d of one key: %+v", i, r)
		}
	}
}
