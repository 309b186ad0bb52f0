package store

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"strings"

	apiv1 "github.com/corral-build/corral/api/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Snapshot is a consistent read of everything the scheduler needs, all at Rev.
type Snapshot struct {
	Rev       int64
	Nodes     []NodeEntry
	Groups    []apiv1.Group
	Instances []InstanceEntry
	// usage, when set, is every node's usage (a scheduling snapshot holds
	// only the instances a pass acts on, not every slot-holding one).
	usage map[string]NodeUsage
}

// NodeEntry is a node with its liveness and revision.
type NodeEntry struct {
	NodeRecord
	ModRev int64
	Alive  bool
}

// State is the node's state as the API names it.
func (n NodeEntry) State() string {
	switch {
	case !n.Alive:
		return apiv1.NodeOffline
	case n.Drain:
		return apiv1.NodeDrain
	}
	return apiv1.NodeActive
}

// InstanceEntry is an instance with its revision.
type InstanceEntry struct {
	InstanceRecord
	ModRev int64
}

// Snapshot reads nodes, liveness, groups and instances at one revision:
// from the view when it is enabled and caught up, else from etcd.
func (s *Store) Snapshot(ctx context.Context) (Snapshot, error) {
	if s.caughtUp(ctx) {
		s.view.mu.RLock()
		defer s.view.mu.RUnlock()
		return s.view.snapshot(), nil
	}
	return s.readSnapshot(ctx)
}

// SchedulingSnapshot is what a scheduling pass needs: every node and group,
// the node usage, and only the instances it acts on (waiting to be placed,
// or holding a slot on a node that is gone). From the view it costs
// O(nodes + those instances), not O(every instance).
func (s *Store) SchedulingSnapshot(ctx context.Context) (Snapshot, error) {
	if !s.caughtUp(ctx) {
		return s.readSnapshot(ctx)
	}
	v := s.view
	v.mu.RLock()
	defer v.mu.RUnlock()
	snap := Snapshot{Rev: v.rev}
	if len(v.pending) == 0 && !v.holdingOnDeadNodes() {
		// Nothing to place or fail: an idle cloud's passes (every few
		// seconds, and after its nodes' writes) copy no nodes.
		return snap, nil
	}
	snap.usage = maps.Clone(v.usage)
	v.nodesAndGroups(&snap)
	for id := range v.pending {
		snap.Instances = append(snap.Instances, v.instances[id].InstanceEntry)
	}
	for node, ids := range v.holding {
		if v.alive[node] {
			continue
		}
		for id := range ids {
			snap.Instances = append(snap.Instances, v.instances[id].InstanceEntry)
		}
	}
	return snap, nil
}

// readSnapshot is Snapshot from etcd.
func (s *Store) readSnapshot(ctx context.Context) (Snapshot, error) {
	var snap Snapshot
	resp, err := s.cli.Get(ctx, s.prefix+"instances/", clientv3.WithPrefix())
	if err != nil {
		return snap, fmt.Errorf("snapshot instances: %w", err)
	}
	snap.Rev = resp.Header.Revision
	for _, kv := range resp.Kvs {
		var r InstanceRecord
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return snap, fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		snap.Instances = append(snap.Instances, InstanceEntry{r, kv.ModRevision})
	}
	at := clientv3.WithRev(snap.Rev)
	nodes, err := s.cli.Get(ctx, s.prefix+"nodes/", clientv3.WithPrefix(), at)
	if err != nil {
		return snap, fmt.Errorf("snapshot nodes: %w", err)
	}
	alive, err := s.cli.Get(ctx, s.AlivePrefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly(), at)
	if err != nil {
		return snap, fmt.Errorf("snapshot liveness: %w", err)
	}
	live := map[string]bool{}
	for _, kv := range alive.Kvs {
		live[strings.TrimPrefix(string(kv.Key), s.AlivePrefix())] = true
	}
	for _, kv := range nodes.Kvs {
		var n NodeRecord
		if err := json.Unmarshal(kv.Value, &n); err != nil {
			return snap, fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		snap.Nodes = append(snap.Nodes, NodeEntry{n, kv.ModRevision, live[n.Report.NodeID]})
	}
	snap.Groups, _, err = list[apiv1.Group](ctx, s.cli, s.prefix+"groups/", at)
	return snap, err
}

// NodeUsage is what a node's instances hold.
type NodeUsage struct{ Slots, VCPU, VRAM int }

// Add counts one more instance of spec.
func (u NodeUsage) Add(spec apiv1.StartSpec) NodeUsage {
	return NodeUsage{u.Slots + 1, u.VCPU + spec.VCPU, u.VRAM + spec.VRAM}
}

// Resources is what an instance holds: its explicit vcpu/vram, or, where it
// was started without them, what its VM really got (the template's cpu and
// ram, as the node reports them in vminfo).
func (r InstanceRecord) Resources() apiv1.StartSpec {
	spec := r.Spec
	if r.VMInfo != nil {
		if spec.VCPU == 0 {
			spec.VCPU = r.VMInfo.CPUCores
		}
		if mb, ok := r.VMInfo.RAMMB(); ok && spec.VRAM == 0 {
			spec.VRAM = mb
		}
	}
	return spec
}

// Usage sums, per node, the instances holding a slot there.
func (snap Snapshot) Usage() map[string]NodeUsage {
	if snap.usage != nil {
		return maps.Clone(snap.usage)
	}
	used := map[string]NodeUsage{}
	for _, in := range snap.Instances {
		if in.SlotHeld {
			used[in.NodeID] = used[in.NodeID].Add(in.Resources())
		}
	}
	return used
}

// Placement binds a Scheduling instance to a node.
type Placement struct {
	Instance    InstanceRecord // the updated record to write
	InstanceRev int64
	NodeID      string
	NodeRev     int64
	// AssignedSince: the commit fails if any of the node's assignments changed
	// after this revision, which would mean the capacity check is stale.
	AssignedSince int64
}

// Place commits a placement if, inside the transaction, the fence still holds
// (this controller still leads), the instance and node are unchanged, the
// node is alive and no other placement landed on it since the snapshot.
// It returns the commit revision, or 0 when a check failed.
func (s *Store) Place(ctx context.Context, p Placement, fence clientv3.Cmp) (int64, error) {
	inst := p.Instance
	asg := apiv1.Assignment{InstanceID: inst.InstanceID, VMID: inst.VMID, Tag: inst.Tag, Spec: inst.Spec, Restarts: inst.Restarts}
	resp, err := s.cli.Txn(ctx).If(
		fence,
		clientv3.Compare(clientv3.ModRevision(s.instanceKey(inst.InstanceID)), "=", p.InstanceRev),
		clientv3.Compare(clientv3.ModRevision(s.nodeKey(p.NodeID)), "=", p.NodeRev),
		clientv3.Compare(clientv3.CreateRevision(s.aliveKey(p.NodeID)), ">", 0),
		clientv3.Compare(clientv3.ModRevision(s.assignPrefix(p.NodeID)), "<", p.AssignedSince+1).
			WithPrefix(),
	).Then(
		clientv3.OpPut(s.instanceKey(inst.InstanceID), mustJSON(inst)),
		clientv3.OpPut(s.assignKey(p.NodeID, inst.InstanceID), mustJSON(asg)),
	).Commit()
	if err != nil {
		return 0, fmt.Errorf("place %s on %s: %w", inst.InstanceID, p.NodeID, err)
	}
	if !resp.Succeeded {
		return 0, nil
	}
	return resp.Header.Revision, nil
}

// MaxPlacementBatch bounds the placements PlaceBatch commits together
// (etcd's default limit is 128 operations a transaction, compares and
// puts counted apart: 1 + 4 a node + 1 an instance compares, 2 puts each).
const MaxPlacementBatch = 24

// PlaceBatch commits placements together, in one transaction, when every
// check of every one holds (as Place's). When one fails none is written and
// it answers 0; the caller then places them one by one.
func (s *Store) PlaceBatch(ctx context.Context, ps []Placement, fence clientv3.Cmp) (int64, error) {
	if len(ps) > MaxPlacementBatch {
		return 0, fmt.Errorf("place: %d placements in one transaction, at most %d", len(ps), MaxPlacementBatch)
	}
	cmps := []clientv3.Cmp{fence}
	var ops []clientv3.Op
	nodeSeen := map[string]bool{}
	for _, p := range ps {
		inst := p.Instance
		asg := apiv1.Assignment{InstanceID: inst.InstanceID, VMID: inst.VMID, Tag: inst.Tag, Spec: inst.Spec, Restarts: inst.Restarts}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(s.instanceKey(inst.InstanceID)), "=", p.InstanceRev))
		if !nodeSeen[p.NodeID] {
			nodeSeen[p.NodeID] = true
			// Several placements on one node share its checks: the plan
			// counted them all against the node's capacity.
			cmps = append(cmps,
				clientv3.Compare(clientv3.ModRevision(s.nodeKey(p.NodeID)), "=", p.NodeRev),
				clientv3.Compare(clientv3.CreateRevision(s.aliveKey(p.NodeID)), ">", 0),
				clientv3.Compare(clientv3.ModRevision(s.assignPrefix(p.NodeID)), "<", p.AssignedSince+1).WithPrefix())
		}
		ops = append(ops, clientv3.OpPut(s.instanceKey(inst.InstanceID), mustJSON(inst)),
			clientv3.OpPut(s.assignKey(p.NodeID, inst.InstanceID), mustJSON(asg)))
	}
	resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return 0, fmt.Errorf("place %d instances: %w", len(ps), err)
	}
	if !resp.Succeeded {
		return 0, nil
	}
	return resp.Header.Revision, nil
}

// Waiting is a waiting instance's new record (its reason) and the
// revision it was read at.
type Waiting struct {
	Instance InstanceRecord
	Rev      int64
}

// SetWaitingBatch records why instances still wait, many a transaction;
// a batch in which one changed meanwhile is written one by one (the
// changed one is skipped: the next pass judges it again).
func (s *Store) SetWaitingBatch(ctx context.Context, ws []Waiting, fence clientv3.Cmp) error {
	const per = 60
	for len(ws) > 0 {
		part := ws[:min(per, len(ws))]
		ws = ws[len(part):]
		cmps := []clientv3.Cmp{fence}
		var ops []clientv3.Op
		for _, w := range part {
			key := s.instanceKey(w.Instance.InstanceID)
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", w.Rev))
			ops = append(ops, clientv3.OpPut(key, mustJSON(w.Instance)))
		}
		resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return fmt.Errorf("record wait reasons: %w", err)
		}
		if resp.Succeeded {
			continue
		}
		for _, w := range part {
			if err := s.SetWaiting(ctx, w.Instance, w.Rev, fence); err != nil {
				return err
			}
		}
	}
	return nil
}

// SetWaiting records why an instance still waits, unless it changed since rev.
func (s *Store) SetWaiting(ctx context.Context, inst InstanceRecord, rev int64, fence clientv3.Cmp) error {
	key := s.instanceKey(inst.InstanceID)
	_, err := s.cli.Txn(ctx).
		If(fence, clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(clientv3.OpPut(key, mustJSON(inst))).Commit()
	if err != nil {
		return fmt.Errorf("record wait reason for %s: %w", inst.InstanceID, err)
	}
	return nil
}

// holdingOnDeadNodes reports whether an instance holds a slot on a node
// that is not alive (v.mu held for reading).
func (v *view) holdingOnDeadNodes() bool {
	for node := range v.holding {
		if !v.alive[node] {
			return true
		}
	}
	return false
}
