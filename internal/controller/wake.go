package controller

import (
	"context"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// wakeHub wakes nodes' long polls: one etcd watch per kind of a node's
// desired state (assignments, distributions, saves) for the whole
// controller, fanned out to the waiting polls by node, instead of three new
// watches per poll and wake. What it cannot vouch for (changes before it
// started watching, or while its watch was down) ends a wait at once: the
// answer is always the full desired set, so an early answer costs a read,
// never a missed change.
type wakeHub struct {
	mu      sync.Mutex
	ready   bool
	floor   int64                                 // changes after floor are seen
	last    map[string]int64                      // node -> revision of its latest change
	waiters map[string]map[chan struct{}]struct{} // node -> waiting polls
}

func newWakeHub() *wakeHub {
	return &wakeHub{last: map[string]int64{}, waiters: map[string]map[chan struct{}]struct{}{}}
}

// StartWatchers runs the controller's shared watches until ctx ends: the
// store's view (instances, nodes, groups) and the nodes' wake hub.
func (s *Service) StartWatchers(ctx context.Context) {
	s.st.EnableView(ctx)
	s.wake = newWakeHub()
	go s.wake.run(ctx, s)
}

func (h *wakeHub) run(ctx context.Context, s *Service) {
	kinds := []string{"assign/", "distribute/", "save/"}
	for ctx.Err() == nil {
		err := h.watch(ctx, s, kinds)
		h.mu.Lock()
		h.ready = false
		h.wakeAll()
		h.mu.Unlock()
		if ctx.Err() == nil {
			s.log.Debug("node wake watch restarting", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

func (h *wakeHub) watch(ctx context.Context, s *Service, kinds []string) error {
	cli := s.st.Client()
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	resp, err := cli.Get(gctx, s.st.Key("assign/"), clientv3.WithPrefix(), clientv3.WithCountOnly())
	cancel()
	if err != nil {
		return err
	}
	start := resp.Header.Revision
	wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer wcancel()
	merged := make(chan clientv3.WatchResponse)
	for _, k := range kinds {
		ch := cli.Watch(wctx, s.st.Key(k), clientv3.WithPrefix(), clientv3.WithRev(start+1))
		go func() {
			for r := range ch {
				select {
				case merged <- r:
				case <-wctx.Done():
					return
				}
			}
			select {
			case merged <- clientv3.WatchResponse{Canceled: true}:
			case <-wctx.Done():
			}
		}()
	}
	h.mu.Lock()
	h.ready, h.floor = true, start
	h.mu.Unlock()
	prefix := s.st.Key("")
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case r := <-merged:
			if r.Canceled || r.Err() != nil {
				return r.Err()
			}
			h.mu.Lock()
			for _, ev := range r.Events {
				rel := strings.TrimPrefix(string(ev.Kv.Key), prefix)
				_, rest, _ := strings.Cut(rel, "/")
				node, _, _ := strings.Cut(rest, "/")
				rev := ev.Kv.ModRevision
				if rev > h.last[node] {
					h.last[node] = rev
				}
				for ch := range h.waiters[node] {
					close(ch)
				}
				delete(h.waiters, node)
			}
			h.mu.Unlock()
		}
	}
}

func (h *wakeHub) wakeAll() {
	for node, ws := range h.waiters {
		for ch := range ws {
			close(ch)
		}
		delete(h.waiters, node)
	}
}

// wait returns once node's desired state changed after revision since, or
// when the hub cannot tell, or after timeout or ctx ends.
func (h *wakeHub) wait(ctx context.Context, node string, since int64, timeout time.Duration) {
	h.mu.Lock()
	if !h.ready || since < h.floor || h.last[node] > since {
		h.mu.Unlock()
		return
	}
	ch := make(chan struct{})
	if h.waiters[node] == nil {
		h.waiters[node] = map[chan struct{}]struct{}{}
	}
	h.waiters[node][ch] = struct{}{}
	h.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-ch:
		return
	case <-t.C:
	case <-ctx.Done():
	}
	h.mu.Lock()
	delete(h.waiters[node], ch)
	if len(h.waiters[node]) == 0 {
		delete(h.waiters, node)
	}
	h.mu.Unlock()
}
