package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// NodeDesired is what a node is asked to do, all read at revision Rev: its
// assignments (terminations included), template pulls and image saves.
type NodeDesired struct {
	Rev         int64
	Assignments []apiv1.Assignment
	Prefetches  []apiv1.Prefetch
	Saves       []apiv1.ImageSave
}

// desiredKinds are the key kinds of a node's desired state, each
// "<kind>/<node>/<id>".
var desiredKinds = []string{"assign", "distribute", "save"}

// nodeDesired is a node's desired state as the view holds it, by key,
// decoded once as it changes (a poll's answer decodes nothing).
type nodeDesired struct {
	assign     map[string]apiv1.Assignment
	distribute map[string]apiv1.Prefetch
	save       map[string]apiv1.ImageSave
	changed    int64 // mod revision of its latest change seen
}

// set puts (value non-nil) or deletes id's entry of kind.
func (d *nodeDesired) set(kind, id string, value []byte) {
	switch kind {
	case "assign":
		setDecoded(d.assign, id, value)
	case "distribute":
		setDecoded(d.distribute, id, value)
	case "save":
		setDecoded(d.save, id, value)
	}
}

func setDecoded[T any](m map[string]T, id string, value []byte) {
	var v T
	if value == nil || json.Unmarshal(value, &v) != nil {
		delete(m, id) // gone, or not one of ours
		return
	}
	m[id] = v
}

// applyDesired applies one event on a desired-state key (v.mu held for
// writing) and wakes the node's waiting polls.
func (v *view) applyDesired(kind, rest string, value []byte, put bool, rev int64) {
	if node, ok := setDesired(v.desired, kind, rest, value, put, rev); ok {
		if _, registered := v.nodes[node]; !registered {
			v.dropDesired(node)
		}
		v.wake(node)
	}
}

// dropDesired forgets the desired state of a node removed from the cloud
// once nothing is left of it (v.mu held for writing), so entries do not
// pile up as nodes come and go. Its polls are refused: the node is gone.
func (v *view) dropDesired(node string) {
	if d := v.desired[node]; d != nil && len(d.assign) == 0 && len(d.distribute) == 0 && len(d.save) == 0 {
		delete(v.desired, node)
	}
}

// setDesired applies a put or delete of "<kind>/<rest>" to m and returns
// the node it belongs to. An entry stays when its node has nothing left:
// its revision still tells polls that something changed.
func setDesired(m map[string]*nodeDesired, kind, rest string, value []byte, put bool, rev int64) (string, bool) {
	node, id, ok := strings.Cut(rest, "/")
	if !ok {
		return "", false
	}
	d := m[node]
	if d == nil {
		d = &nodeDesired{assign: map[string]apiv1.Assignment{}, distribute: map[string]apiv1.Prefetch{}, save: map[string]apiv1.ImageSave{}}
		m[node] = d
	}
	if !put {
		value = nil
	}
	d.set(kind, id, value)
	d.changed = max(d.changed, rev)
	return node, true
}

// wake ends node's waiting polls (v.mu held for writing).
func (v *view) wake(node string) {
	for _, ch := range v.waiters[node] {
		close(ch)
	}
	delete(v.waiters, node)
}

// wakeAll ends every waiting poll (v.mu held for writing): after a relist
// the view cannot tell which nodes changed while it was not watching.
func (v *view) wakeAll() {
	for node := range v.waiters {
		v.wake(node)
	}
}

// readDesired reads every node's desired state at rev, for the view.
func (s *Store) readDesired(ctx context.Context, rev int64) (map[string]*nodeDesired, error) {
	m := map[string]*nodeDesired{}
	for _, kind := range desiredKinds {
		resp, err := s.cli.Get(ctx, s.prefix+kind+"/", clientv3.WithPrefix(), clientv3.WithRev(rev))
		if err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", kind, err)
		}
		for _, kv := range resp.Kvs {
			setDesired(m, kind, strings.TrimPrefix(string(kv.Key), s.prefix+kind+"/"), kv.Value, true, kv.ModRevision)
		}
	}
	return m, nil
}

// WaitDesired returns node's desired state once it changed after revision
// since, or after timeout (the answer is always the whole desired state, at
// a revision not older than since); since 0 answers at once. With the view
// synced it reads nothing from etcd and opens no watch: a poll waits on
// the view's watch, woken by its node's changes only. Without the view (or
// when the view is too far behind since) it watches and reads etcd.
func (s *Store) WaitDesired(ctx context.Context, node string, since int64, timeout time.Duration) (NodeDesired, error) {
	deadline := time.Now().Add(timeout) // for the view and etcd together
	if d, ok := s.waitInView(ctx, node, since, deadline); ok {
		return d, ctx.Err()
	}
	if since > 0 {
		wctx, cancel := context.WithDeadline(ctx, deadline)
		// Any event, a compaction error or the timeout ends the wait.
		var chans []clientv3.WatchChan
		for _, kind := range desiredKinds {
			chans = append(chans, s.cli.Watch(wctx, s.prefix+kind+"/"+node+"/", clientv3.WithPrefix(), clientv3.WithRev(since+1)))
		}
		select {
		case <-chans[0]:
		case <-chans[1]:
		case <-chans[2]:
		case <-wctx.Done():
		}
		cancel()
		if ctx.Err() != nil {
			return NodeDesired{}, ctx.Err()
		}
	}
	return s.readNodeDesired(ctx, node)
}

// readNodeDesired reads node's desired state from etcd, at one revision.
func (s *Store) readNodeDesired(ctx context.Context, node string) (NodeDesired, error) {
	var d NodeDesired
	var err error
	if d.Assignments, d.Rev, err = s.Assignments(ctx, node); err != nil {
		return d, err
	}
	at := clientv3.WithRev(d.Rev)
	if d.Prefetches, _, err = list[apiv1.Prefetch](ctx, s.cli, s.DistributePrefix(node), at); err != nil {
		return d, err
	}
	d.Saves, _, err = list[apiv1.ImageSave](ctx, s.cli, s.SavePrefix(node), at)
	return d, err
}

// waitInView is WaitDesired served by the view; false when it cannot be
// (no view, not synced, or not caught up with since within viewWait).
func (s *Store) waitInView(ctx context.Context, node string, since int64, deadline time.Time) (NodeDesired, bool) {
	v := s.view
	if v == nil {
		return NodeDesired{}, false
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	var ch chan struct{}
	asked := false
	for {
		v.mu.Lock()
		if !v.synced {
			v.mu.Unlock()
			return NodeDesired{}, false
		}
		if v.rev < since {
			// This poll's last answer came from a newer revision (another
			// controller, or etcd): never answer older than it.
			adv := v.advanced
			v.mu.Unlock()
			if !asked {
				// since may lie past the last change the view watches: a
				// progress notification moves it there.
				asked = true
				_ = s.cli.RequestProgress(clientv3.WithRequireLeader(ctx))
			}
			wait := time.NewTimer(viewWait)
			select {
			case <-adv:
				wait.Stop()
				continue
			case <-wait.C:
				return NodeDesired{}, false
			case <-ctx.Done():
				wait.Stop()
				return NodeDesired{}, true
			}
		}
		d := v.desired[node]
		if since == 0 || since < v.desiredFloor || ch != nil || (d != nil && d.changed > since) {
			out := v.nodeDesired(node)
			if ch != nil {
				v.unwait(node, ch)
			}
			v.mu.Unlock()
			return out, true
		}
		ch = make(chan struct{})
		v.waiters[node] = append(v.waiters[node], ch)
		v.mu.Unlock()
		select {
		case <-ch: // changed, or the view relisted
		case <-t.C:
		case <-ctx.Done():
			v.mu.Lock()
			v.unwait(node, ch)
			v.mu.Unlock()
			return NodeDesired{}, true
		}
		// Answer (ch != nil) at the view's revision now.
	}
}

// unwait removes a poll's channel from node's waiters (v.mu held).
func (v *view) unwait(node string, ch chan struct{}) {
	ws := v.waiters[node]
	if i := slices.Index(ws, ch); i >= 0 {
		ws = slices.Delete(ws, i, i+1)
	}
	if len(ws) == 0 {
		delete(v.waiters, node)
	} else {
		v.waiters[node] = ws
	}
}

// nodeDesired is node's desired state at the view's revision, in key
// order as etcd lists it (v.mu held).
func (v *view) nodeDesired(node string) NodeDesired {
	out := NodeDesired{Rev: v.rev}
	d := v.desired[node]
	if d == nil {
		return out
	}
	out.Assignments = sortedValues(d.assign)
	out.Prefetches = sortedValues(d.distribute)
	out.Saves = sortedValues(d.save)
	return out
}

func sortedValues[T any](m map[string]T) []T {
	out := make([]T, 0, len(m))
	for _, k := range sortedKeys(m) {
		out = append(out, m[k])
	}
	return out
}
