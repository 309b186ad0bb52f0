package store

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// view is a watch-fed copy of nodes, liveness, groups and instances (an
// informer: list once, then apply the watch in revision order, relist after
// a compaction or a broken watch). Reads served from it are consistent: a
// read first learns etcd's current revision (one small request) and waits
// until the view has applied it, so a client reads its own writes as from
// etcd, without each read decoding every record.
type view struct {
	mu        sync.RWMutex
	synced    bool
	rev       int64 // applied through this revision
	advanced  chan struct{}
	instances map[string]*viewInstance
	// order is the instances' ids by creation (CrTime, then id), kept while
	// instances are created in that order (the usual case) and rebuilt on
	// the next list otherwise; deleted ids stay in it until then (gone
	// counts them).
	order   []string
	orderOK bool
	gone    int
	nodes   map[string]NodeEntry
	alive   map[string]bool
	groups  map[string]apiv1.Group
	// Kept as instances change, for scheduling snapshots: what each node's
	// slot-holding instances use, which instances wait to be placed, and
	// which hold a slot on each node.
	usage   map[string]NodeUsage
	pending map[string]struct{}
	holding map[string]map[string]struct{}
	// Each node's desired state (desired.go) and its waiting long polls;
	// desiredFloor is the revision of the last relist: deletes before it
	// were not seen, so a poll from before it is answered at once.
	desired      map[string]*nodeDesired
	desiredFloor int64
	waiters      map[string][]chan struct{}
}

// track adds (sign 1) or removes (sign -1) an instance's part in the
// scheduling indexes.
func (v *view) track(in InstanceEntry, sign int) {
	if in.State == apiv1.StateScheduling && in.NodeID == "" {
		if sign > 0 {
			v.pending[in.InstanceID] = struct{}{}
		} else {
			delete(v.pending, in.InstanceID)
		}
	}
	if !in.SlotHeld {
		return
	}
	r := in.Resources()
	u := v.usage[in.NodeID]
	u.Slots += sign
	u.VCPU += sign * r.VCPU
	u.VRAM += sign * r.VRAM
	if u == (NodeUsage{}) {
		delete(v.usage, in.NodeID)
	} else {
		v.usage[in.NodeID] = u
	}
	if sign > 0 {
		if v.holding[in.NodeID] == nil {
			v.holding[in.NodeID] = map[string]struct{}{}
		}
		v.holding[in.NodeID][in.InstanceID] = struct{}{}
	} else {
		delete(v.holding[in.NodeID], in.InstanceID)
		if len(v.holding[in.NodeID]) == 0 {
			delete(v.holding, in.NodeID)
		}
	}
}

// viewInstance is an instance as the view holds it: never changed once
// stored (an update stores a new one), so readers may keep it after
// unlocking, and its list item is encoded at most once.
type viewInstance struct {
	InstanceEntry
	once sync.Once
	item json.RawMessage
	err  error
}

func (v *view) putInstance(in InstanceEntry) {
	old, ok := v.instances[in.InstanceID]
	if ok {
		v.track(old.InstanceEntry, -1)
	}
	v.instances[in.InstanceID] = &viewInstance{InstanceEntry: in}
	v.track(in, 1)
	if ok || !v.orderOK {
		return
	}
	if n := len(v.order); n > 0 {
		if last, ok := v.instances[v.order[n-1]]; !ok || compareCreated(&in.InstanceRecord, &last.InstanceRecord) < 0 {
			v.orderOK = false // out of order: rebuilt by the next list
			return
		}
	}
	v.order = append(v.order, in.InstanceID)
}

func (v *view) deleteInstance(id string) {
	if old, ok := v.instances[id]; ok {
		v.track(old.InstanceEntry, -1)
		delete(v.instances, id)
		v.gone++
		if v.gone > len(v.instances) {
			v.orderOK = false
		}
	}
}

// compareCreated is the order of instance lists: creation time, then id
// (one request's instances share a time).
func compareCreated(a, b *InstanceRecord) int {
	return cmp.Or(a.CrTime.Compare(b.CrTime), strings.Compare(a.InstanceID, b.InstanceID))
}

// Listed is an instance of a list, shared with the view: read-only.
type Listed struct {
	*InstanceEntry
	vi *viewInstance // nil when read from etcd
}

// ListItemJSON is the instance's item of GET /api/v1/vm, encoded once per
// revision when it comes from the view.
func (l Listed) ListItemJSON() (json.RawMessage, error) {
	if l.vi == nil {
		return json.Marshal(l.Instance.ListItem())
	}
	l.vi.once.Do(func() { l.vi.item, l.vi.err = json.Marshal(l.vi.Instance.ListItem()) })
	return l.vi.item, l.vi.err
}

// InstancesByCreation lists the instances keep says to keep, in creation
// order (CrTime, then id: a stable order for paging). From the view the
// entries are shared, not copied: a list of 10,000 costs no record copies.
func (s *Store) InstancesByCreation(ctx context.Context, keep func(*InstanceRecord) bool) ([]Listed, error) {
	if !s.caughtUp(ctx) {
		entries, err := s.ListInstanceEntries(ctx)
		if err != nil {
			return nil, err
		}
		var out []Listed
		for i := range entries {
			if keep(&entries[i].InstanceRecord) {
				out = append(out, Listed{InstanceEntry: &entries[i]})
			}
		}
		slices.SortFunc(out, func(a, b Listed) int { return compareCreated(&a.InstanceRecord, &b.InstanceRecord) })
		return out, nil
	}
	v := s.view
	v.mu.RLock()
	if !v.orderOK {
		v.mu.RUnlock()
		v.mu.Lock()
		v.sortOrder()
		v.mu.Unlock()
		v.mu.RLock()
	}
	defer v.mu.RUnlock()
	out := make([]Listed, 0, len(v.instances))
	for _, id := range v.order {
		if vi, ok := v.instances[id]; ok && keep(&vi.InstanceRecord) {
			out = append(out, Listed{&vi.InstanceEntry, vi})
		}
	}
	return out, nil
}

// sortOrder rebuilds the creation order (v.mu held).
func (v *view) sortOrder() {
	if v.orderOK {
		return
	}
	v.order = v.order[:0]
	for id := range v.instances {
		v.order = append(v.order, id)
	}
	slices.SortFunc(v.order, func(a, b string) int {
		return compareCreated(&v.instances[a].InstanceRecord, &v.instances[b].InstanceRecord)
	})
	v.orderOK, v.gone = true, 0
}

// viewWait bounds how long a read waits for the view to catch up before it
// reads etcd itself.
const viewWait = 2 * time.Second

// EnableView starts the watch-fed view; until it is synced, and whenever
// it lags too far, reads go to etcd.
func (s *Store) EnableView(ctx context.Context) {
	v := &view{advanced: make(chan struct{})}
	s.view = v
	go func() {
		for ctx.Err() == nil {
			err := s.runView(ctx, v)
			v.mu.Lock()
			v.synced = false
			v.wakeAll() // their polls go to etcd until the view is back
			v.mu.Unlock()
			if ctx.Err() == nil {
				_ = err
				select {
				case <-ctx.Done():
				case <-time.After(500 * time.Millisecond):
				}
			}
		}
	}()
}

func (s *Store) runView(ctx context.Context, v *view) error {
	snap, err := s.readSnapshot(ctx)
	if err != nil {
		return err
	}
	desired, err := s.readDesired(ctx, snap.Rev)
	if err != nil {
		return err
	}
	s.viewLists.Add(1)
	v.mu.Lock()
	v.desired, v.desiredFloor = desired, snap.Rev
	if v.waiters == nil {
		v.waiters = map[string][]chan struct{}{}
	}
	// No poll waits on the view here: the loop woke them all when the
	// last run ended, and none waits while it is not synced.
	v.instances = make(map[string]*viewInstance, len(snap.Instances))
	v.order, v.orderOK, v.gone = nil, false, 0
	v.usage, v.pending, v.holding = map[string]NodeUsage{}, map[string]struct{}{}, map[string]map[string]struct{}{}
	for _, in := range snap.Instances {
		v.putInstance(in)
	}
	v.nodes, v.alive, v.groups = map[string]NodeEntry{}, map[string]bool{}, map[string]apiv1.Group{}
	for _, n := range snap.Nodes {
		v.nodes[n.Report.NodeID] = n
		if n.Alive {
			v.alive[n.Report.NodeID] = true
		}
	}
	for _, g := range snap.Groups {
		v.groups[g.ID] = g
	}
	v.setRev(snap.Rev)
	v.synced = true
	v.mu.Unlock()
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	watch := s.cli.Watch(wctx, s.prefix, clientv3.WithPrefix(), clientv3.WithRev(snap.Rev+1), clientv3.WithProgressNotify())
	for resp := range watch {
		if err := resp.Err(); err != nil {
			return err
		}
		if resp.IsProgressNotify() {
			v.mu.Lock()
			v.setRev(resp.Header.Revision)
			v.mu.Unlock()
			continue
		}
		v.mu.Lock()
		last := v.rev
		for _, ev := range resp.Events {
			s.applyToView(v, ev)
			last = max(last, ev.Kv.ModRevision)
		}
		v.setRev(last)
		v.mu.Unlock()
	}
	return errors.New("view watch closed")
}

// setRev moves the applied revision and wakes readers waiting for it
// (v.mu held).
func (v *view) setRev(rev int64) {
	if rev <= v.rev {
		return
	}
	v.rev = rev
	close(v.advanced)
	v.advanced = make(chan struct{})
}

func (s *Store) applyToView(v *view, ev *clientv3.Event) {
	rel := strings.TrimPrefix(string(ev.Kv.Key), s.prefix)
	kind, id, _ := strings.Cut(rel, "/")
	put := ev.Type == mvccpb.PUT
	switch kind {
	case "instances":
		if !put {
			v.deleteInstance(id)
			return
		}
		var r InstanceRecord
		if json.Unmarshal(ev.Kv.Value, &r) == nil {
			v.putInstance(InstanceEntry{r, ev.Kv.ModRevision})
		}
	case "nodes":
		if !put {
			delete(v.nodes, id)
			v.dropDesired(id)
			v.wake(id)
			return
		}
		var n NodeRecord
		if json.Unmarshal(ev.Kv.Value, &n) == nil {
			v.nodes[id] = NodeEntry{n, ev.Kv.ModRevision, false}
		}
	case "alive":
		if put {
			v.alive[id] = true
		} else {
			delete(v.alive, id)
		}
	case "groups":
		if !put {
			delete(v.groups, id)
			return
		}
		var g apiv1.Group
		if json.Unmarshal(ev.Kv.Value, &g) == nil {
			v.groups[id] = g
		}
	case "assign", "distribute", "save":
		v.applyDesired(kind, id, ev.Kv.Value, put, ev.Kv.ModRevision)
	}
}

// caughtUp waits until the view has applied etcd's current revision; false
// when it is not synced or cannot catch up in time (read etcd then).
func (s *Store) caughtUp(ctx context.Context) bool {
	ok := s.viewCaughtUp(ctx)
	if s.view != nil {
		if ok {
			s.viewHits.Add(1)
		} else {
			s.viewMisses.Add(1)
		}
	}
	return ok
}

// ViewLists counts the view's full reads of etcd: one to start, then one
// each time its watch could not resume (metrics, tests).
func (s *Store) ViewLists() int64 { return s.viewLists.Load() }

// ViewReads counts reads the view served and those that went to etcd.
func (s *Store) ViewReads() (view, etcd int64) { return s.viewHits.Load(), s.viewMisses.Load() }

func (s *Store) viewCaughtUp(ctx context.Context) bool {
	v := s.view
	if v == nil {
		return false
	}
	v.mu.RLock()
	synced := v.synced
	v.mu.RUnlock()
	if !synced {
		return false
	}
	// etcd's current revision: a one-key, count-only read (linearizable).
	resp, err := s.cli.Get(ctx, s.prefix+"config/join-token-hash", clientv3.WithCountOnly())
	if err != nil {
		return false
	}
	want := resp.Header.Revision
	deadline := time.NewTimer(viewWait)
	defer deadline.Stop()
	asked := false
	for {
		v.mu.RLock()
		rev, ok, adv := v.rev, v.synced, v.advanced
		v.mu.RUnlock()
		if !ok {
			return false
		}
		if rev >= want {
			return true
		}
		if !asked {
			// The newest revisions may be outside what the view watches:
			// a progress notification tells it how far it has seen.
			asked = true
			_ = s.cli.RequestProgress(clientv3.WithRequireLeader(ctx))
		}
		select {
		case <-adv:
		case <-deadline.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// ViewNode is a node as the view last saw it (no consistency barrier:
// callers compare its revision in a transaction). False without a view.
func (s *Store) ViewNode(id string) (NodeEntry, bool) {
	v := s.view
	if v == nil {
		return NodeEntry{}, false
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	if !v.synced {
		return NodeEntry{}, false
	}
	n, ok := v.nodes[id]
	return n, ok
}

// ViewCaughtUp reports whether reads are served by the view (tests,
// metrics).
func (s *Store) ViewCaughtUp(ctx context.Context) bool { return s.viewCaughtUp(ctx) }

// snapshot copies the view in etcd's order (by key), sorting keys rather
// than the records themselves (v.mu held by the caller for reading).
func (v *view) snapshot() Snapshot {
	snap := Snapshot{Rev: v.rev, Nodes: make([]NodeEntry, 0, len(v.nodes)),
		Instances: make([]InstanceEntry, 0, len(v.instances)), Groups: make([]apiv1.Group, 0, len(v.groups))}
	for _, id := range sortedKeys(v.instances) {
		snap.Instances = append(snap.Instances, v.instances[id].InstanceEntry)
	}
	v.nodesAndGroups(&snap)
	return snap
}

// nodesAndGroups copies every node (with its liveness) and group into snap,
// by key (v.mu held for reading).
func (v *view) nodesAndGroups(snap *Snapshot) {
	for _, id := range sortedKeys(v.nodes) {
		n := v.nodes[id]
		n.Alive = v.alive[id]
		snap.Nodes = append(snap.Nodes, n)
	}
	for _, id := range sortedKeys(v.groups) {
		snap.Groups = append(snap.Groups, v.groups[id])
	}
}

func sortedKeys[T any](m map[string]T) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
