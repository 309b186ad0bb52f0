package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"strings"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// InstanceRecord is an instance as stored: the wire view plus the start spec.
type InstanceRecord struct {
	apiv1.Instance
	Spec apiv1.StartSpec `json:"spec"`
	// FinishedAt is when the instance became Terminated; retention counts from it.
	FinishedAt time.Time `json:"finished_at,omitzero"`
	// SlotHeld is true while the instance's assignment exists on NodeID; the
	// scheduler counts a node's usage from it.
	SlotHeld bool `json:"slot_held,omitempty"`
	// FailedNodes failed to run the instance (a pull failed there); the
	// scheduler places it elsewhere, and fails it when none is left.
	FailedNodes []string `json:"failed_nodes,omitempty"`
	// Caller is who started the instance (for per-caller limits).
	Caller string `json:"caller,omitempty"`
	// Restarts counts the restarts asked for; the assignment carries it.
	Restarts int `json:"restarts,omitempty"`
	// ScriptBytes is the size of its stored startup script (Spec.ScriptRef).
	ScriptBytes int `json:"script_bytes,omitempty"`
}

// Finished reports whether the instance will never run again.
func (r InstanceRecord) Finished() bool { return r.State == apiv1.StateTerminated }

// NeverStarted reports whether a placed instance's VM has not booted yet:
// it is still being placed or its template pulled.
func (r InstanceRecord) NeverStarted() bool {
	return r.State == apiv1.StateScheduling || r.State == apiv1.StatePulling
}

// Requeue sends an instance whose VM never started back to Scheduling,
// keeping its id and priority, for any node; the caller unassigns it.
func (r *InstanceRecord) Requeue(why string) {
	r.State, r.Message, r.Progress = apiv1.StateScheduling, why+"; placing again", 0
	r.NodeID, r.SlotHeld, r.VMInfo = "", false, nil
}

// CreateInstances stores new instances in one transaction. A startup
// script they share is stored once (scripts/<request id>, in the first
// batch's transaction) and the records name it: 1000 instances of a 128
// KiB script wrote 128 MB, and every later update of each rewrote it.
func (s *Store) CreateInstances(ctx context.Context, recs []InstanceRecord) error {
	// etcd caps a transaction's operations (128 by default) and a request's
	// bytes (1.5 MiB by default): batch by both.
	const maxOps, maxBytes = 100, 1 << 20
	var ops []clientv3.Op
	var cmps []clientv3.Cmp
	size := 0
	scriptKey := ""
	if len(recs) > 0 && len(recs[0].Spec.StartupScript) > 0 && recs[0].InflightReqID != "" {
		ref, script := recs[0].InflightReqID, recs[0].Spec.StartupScript
		scriptKey = s.scriptKey(ref)
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(scriptKey), "=", 0))
		ops = append(ops, clientv3.OpPut(scriptKey, string(script)))
		size += len(script)
		for i := range recs {
			recs[i].Spec.StartupScript, recs[i].Spec.ScriptRef = nil, ref
		}
	}
	for i := range recs {
		// Kept once, in the instance (what the API shows).
		if string(recs[i].Spec.Metadata) == string(recs[i].Metadata) {
			recs[i].Spec.Metadata = nil
		}
	}
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		// Not group-committed: a start answers as soon as its own
		// transaction does (sharing measured 10 ms more at the median).
		resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return fmt.Errorf("create instances: %w", err)
		}
		if !resp.Succeeded {
			return fmt.Errorf("create instances: id collision")
		}
		ops, cmps, size = ops[:0], cmps[:0], 0
		return nil
	}
	written := 0
	rollback := func(err error) error {
		// All or nothing: remove the batches already written.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		for _, r := range recs[:written] {
			_, _ = s.cli.Delete(rctx, s.instanceKey(r.InstanceID))
		}
		if scriptKey != "" && written > 0 {
			_, _ = s.cli.Delete(rctx, scriptKey)
		}
		return err
	}
	for i, r := range recs {
		key := s.instanceKey(r.InstanceID)
		val := mustJSON(r)
		if len(ops) == maxOps || size+len(key)+len(val) > maxBytes {
			if err := flush(); err != nil {
				return rollback(err)
			}
			written = i
		}
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
		ops = append(ops, clientv3.OpPut(key, val))
		size += len(key) + len(val)
	}
	if err := flush(); err != nil {
		return rollback(err)
	}
	return nil
}

// IsNoSpace reports whether etcd refused a write for want of space: its
// quota reached, the NOSPACE alarm raised. Until an operator compacts,
// defragments and disarms it, etcd takes reads and deletes only.
func IsNoSpace(err error) bool {
	return errors.Is(err, rpctypes.ErrGRPCNoSpace) || errors.Is(err, rpctypes.ErrNoSpace) ||
		err != nil && strings.Contains(err.Error(), rpctypes.ErrGRPCNoSpace.Error())
}

// IsUnavailable reports whether etcd could not answer for now: a request
// timed out (a member died, its leader changed), there is no leader. The
// request may or may not have been applied; trying again later is the
// caller's call (a read always; a write when it is idempotent).
func IsUnavailable(err error) bool {
	if err == nil {
		return false
	}
	for _, e := range []error{rpctypes.ErrTimeout, rpctypes.ErrTimeoutDueToLeaderFail, rpctypes.ErrTimeoutDueToConnectionLost,
		rpctypes.ErrNoLeader, rpctypes.ErrLeaderChanged, rpctypes.ErrGRPCTimeout, rpctypes.ErrGRPCTimeoutDueToLeaderFail,
		rpctypes.ErrGRPCTimeoutDueToConnectionLost, rpctypes.ErrGRPCNoLeader, rpctypes.ErrGRPCLeaderChanged} {
		if errors.Is(err, e) || strings.Contains(err.Error(), e.Error()) {
			return true
		}
	}
	return false
}

// ForgetInstance deletes an instance, its assignment and its console: what
// a terminate does while etcd takes deletes only (NOSPACE). The node sees
// the assignment go and destroys the VM; its report finds no record.
func (s *Store) ForgetInstance(ctx context.Context, id string) error {
	var r InstanceRecord
	if _, err := s.get(ctx, s.instanceKey(id), &r); err != nil {
		return err
	}
	ops := []clientv3.Op{clientv3.OpDelete(s.instanceKey(id)), clientv3.OpDelete(s.consoleKey(id))}
	if r.NodeID != "" {
		ops = append(ops, clientv3.OpDelete(s.assignKey(r.NodeID, id)))
	}
	if _, err := s.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
		return fmt.Errorf("forget instance %s: %w", id, err)
	}
	return nil
}

// Script returns a stored startup script (immutable: cached).
func (s *Store) Script(ctx context.Context, ref string) ([]byte, error) {
	if b, ok := s.scripts.get(ref); ok {
		return b, nil
	}
	resp, err := s.cli.Get(ctx, s.scriptKey(ref))
	if err != nil {
		return nil, fmt.Errorf("startup script %s: %w", ref, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, ErrNotFound
	}
	b := resp.Kvs[0].Value
	s.scripts.put(ref, b)
	return b, nil
}

// PurgeScripts deletes stored scripts no instance names any more. A script
// is written with its first instances, so one that is older than the view
// (or the listing) and named by none of its instances is orphaned for good.
func (s *Store) PurgeScripts(ctx context.Context) (int, error) {
	named := map[string]bool{}
	var asOf int64
	if v := s.view; v != nil {
		v.mu.RLock()
		if v.synced {
			asOf = v.rev
			for _, in := range v.instances {
				if in.Spec.ScriptRef != "" {
					named[in.Spec.ScriptRef] = true
				}
			}
		}
		v.mu.RUnlock()
	}
	var scripts []*mvccpb.KeyValue
	if asOf == 0 {
		// Both lists at one revision.
		resp, err := s.cli.Txn(ctx).Then(clientv3.OpGet(s.prefix+"instances/", clientv3.WithPrefix()),
			clientv3.OpGet(s.prefix+"scripts/", clientv3.WithPrefix(), clientv3.WithKeysOnly())).Commit()
		if err != nil {
			return 0, fmt.Errorf("list scripts: %w", err)
		}
		asOf = resp.Header.Revision
		for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
			var r InstanceRecord
			if json.Unmarshal(kv.Value, &r) == nil && r.Spec.ScriptRef != "" {
				named[r.Spec.ScriptRef] = true
			}
		}
		scripts = resp.Responses[1].GetResponseRange().Kvs
	} else {
		resp, err := s.cli.Get(ctx, s.prefix+"scripts/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return 0, fmt.Errorf("list scripts: %w", err)
		}
		scripts = resp.Kvs
	}
	n := 0
	for _, kv := range scripts {
		ref := strings.TrimPrefix(string(kv.Key), s.prefix+"scripts/")
		if named[ref] || kv.CreateRevision > asOf {
			continue
		}
		if _, err := s.cli.Delete(ctx, string(kv.Key)); err != nil {
			return n, fmt.Errorf("delete script %s: %w", ref, err)
		}
		s.scripts.drop(ref)
		n++
	}
	return n, nil
}

// GetInstance returns one instance: one linearizable read of its key from
// etcd, the same request the view's consistency barrier would make, so a
// get never waits for the view to catch up (it lags most when the cloud is
// busiest). When the view holds the record at the revision read, its copy
// is returned and the value is not decoded again.
func (s *Store) GetInstance(ctx context.Context, id string) (InstanceRecord, error) {
	key := s.instanceKey(id)
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return InstanceRecord{}, fmt.Errorf("get %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return InstanceRecord{}, ErrNotFound
	}
	kv := resp.Kvs[0]
	if v := s.view; v != nil {
		v.mu.RLock()
		in, ok := v.instances[id]
		ok = ok && v.synced
		v.mu.RUnlock()
		if ok && in.ModRev == kv.ModRevision {
			return in.InstanceRecord, nil // a copy
		}
	}
	var r InstanceRecord
	if err := json.Unmarshal(kv.Value, &r); err != nil {
		return InstanceRecord{}, fmt.Errorf("decode %s: %w", key, err)
	}
	return r, nil
}

// ListInstanceEntries returns every instance with its revision, by id.
func (s *Store) ListInstanceEntries(ctx context.Context) ([]InstanceEntry, error) {
	if s.caughtUp(ctx) {
		s.view.mu.RLock()
		out := make([]InstanceEntry, 0, len(s.view.instances))
		for _, id := range sortedKeys(s.view.instances) {
			out = append(out, s.view.instances[id].InstanceEntry)
		}
		s.view.mu.RUnlock()
		return out, nil
	}
	resp, err := s.cli.Get(ctx, s.prefix+"instances/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list instances: %w", err)
	}
	out := make([]InstanceEntry, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var r InstanceRecord
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return nil, fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		out = append(out, InstanceEntry{r, kv.ModRevision})
	}
	return out, nil
}

// ListInstances returns every instance.
func (s *Store) ListInstances(ctx context.Context) ([]InstanceRecord, error) {
	entries, err := s.ListInstanceEntries(ctx)
	if err != nil {
		return nil, err
	}
	recs := make([]InstanceRecord, len(entries))
	for i := range entries {
		recs[i] = entries[i].InstanceRecord
	}
	return recs, nil
}

// InstanceUpdate is what UpdateInstance's callback decides beyond the record itself.
type InstanceUpdate struct {
	// Unassign deletes the instance's assignment on its node: the node's signal
	// to destroy the VM. The callback clears SlotHeld once the VM is gone.
	Unassign bool
	// Terminate replaces the assignment by a terminate marker in the same
	// transaction: the node destroys the VM if it has one and confirms
	// Terminated either way, even if it never saw the assignment.
	Terminate bool
	// Restart rewrites the assignment with the record's Restarts count in the
	// same transaction: the node restarts the VM in place.
	Restart bool
	Skip    bool // leave the record unchanged
	// Console, when set, replaces the instance's stored console tail.
	Console string
}

func (s *Store) consoleKey(id string) string { return s.prefix + "consoles/" + id }

// Console is an instance's console tail as its node last sent it.
type Console struct {
	Text string    `json:"text"`
	At   time.Time `json:"at"`
}

// GetConsole returns an instance's console tail (zero when none was sent).
func (s *Store) GetConsole(ctx context.Context, id string) (Console, error) {
	var c Console
	_, err := s.get(ctx, s.consoleKey(id), &c)
	if err == ErrNotFound {
		err = nil
	}
	return c, err
}

// UpdateInstance changes an instance atomically; the callback may also ask to
// delete its assignment in the same transaction.
func (s *Store) UpdateInstance(ctx context.Context, id string, fn func(*InstanceRecord) (InstanceUpdate, error)) (InstanceRecord, error) {
	key := s.instanceKey(id)
	for {
		var r InstanceRecord
		rev, err := s.get(ctx, key, &r)
		if err != nil {
			return r, err
		}
		nodeBefore := r.NodeID
		u, err := fn(&r)
		if err != nil || u.Skip {
			return r, err
		}
		ops := s.updateOps(id, r, nodeBefore, u)
		if u.Restart && nodeBefore != "" {
			asg := apiv1.Assignment{InstanceID: id, VMID: r.VMID, Tag: r.Tag, Spec: r.Spec, Restarts: r.Restarts}
			// Only while the assignment exists: a restart never re-places.
			cmp := clientv3.Compare(clientv3.CreateRevision(s.assignKey(nodeBefore, id)), ">", 0)
			resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev), cmp).
				Then(append(ops, clientv3.OpPut(s.assignKey(nodeBefore, id), mustJSON(asg)))...).Commit()
			if err != nil {
				return r, fmt.Errorf("restart instance %s: %w", id, err)
			}
			if resp.Succeeded {
				return r, nil
			}
			continue
		}
		ok, err := s.group.commit(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", rev)}, ops)
		if err != nil {
			return r, fmt.Errorf("update instance %s: %w", id, err)
		}
		if ok {
			return r, nil
		}
		if err := ctx.Err(); err != nil {
			return r, err
		}
	}
}

// updateOps writes an updated record and what u asks besides (but a
// restart's assignment, which is conditional).
func (s *Store) updateOps(id string, r InstanceRecord, nodeBefore string, u InstanceUpdate) []clientv3.Op {
	ops := []clientv3.Op{clientv3.OpPut(s.instanceKey(id), mustJSON(r))}
	if u.Console != "" {
		ops = append(ops, clientv3.OpPut(s.consoleKey(id), mustJSON(Console{Text: u.Console, At: time.Now().UTC()})))
	}
	switch {
	case u.Unassign && nodeBefore != "":
		ops = append(ops, clientv3.OpDelete(s.assignKey(nodeBefore, id)))
	case u.Terminate && nodeBefore != "":
		marker := apiv1.Assignment{InstanceID: id, VMID: r.VMID, Tag: r.Tag, Terminate: true}
		ops = append(ops, clientv3.OpPut(s.assignKey(nodeBefore, id), mustJSON(marker)))
	}
	return ops
}

// UpdateInstances applies fn to each of several instances (distinct ids)
// and commits the changes together through the group commit: for a node's
// report on many instances one etcd revision, each write a transaction of
// its own compared on its record's mod revision. One that lost a race is
// updated again on its own (UpdateInstance), fn called on the record as it
// is then. Instances that do not exist are left out; fn may not ask for a
// Restart.
func (s *Store) UpdateInstances(ctx context.Context, ids []string, fn func(*InstanceRecord) (InstanceUpdate, error)) error {
	// One read transaction per batch: etcd caps its operations (128 by
	// default).
	const maxIDs = 100
	for len(ids) > 0 {
		n := min(maxIDs, len(ids))
		if err := s.updateBatch(ctx, ids[:n], fn); err != nil {
			return err
		}
		ids = ids[n:]
	}
	return nil
}

func (s *Store) updateBatch(ctx context.Context, ids []string, fn func(*InstanceRecord) (InstanceUpdate, error)) error {
	gets := make([]clientv3.Op, len(ids))
	for i, id := range ids {
		gets[i] = clientv3.OpGet(s.instanceKey(id))
	}
	read, err := s.cli.Txn(ctx).Then(gets...).Commit()
	if err != nil {
		return fmt.Errorf("read instances: %w", err)
	}
	var txns []txn
	var batched []string
	for i, id := range ids {
		kvs := read.Responses[i].GetResponseRange().Kvs
		if len(kvs) == 0 {
			continue
		}
		var r InstanceRecord
		if err := json.Unmarshal(kvs[0].Value, &r); err != nil {
			return fmt.Errorf("decode %s: %w", kvs[0].Key, err)
		}
		nodeBefore := r.NodeID
		u, err := fn(&r)
		if err != nil {
			return err
		}
		if u.Skip {
			continue
		}
		if u.Restart {
			return fmt.Errorf("update instance %s: a restart is not batched", id)
		}
		txns = append(txns, txn{[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.instanceKey(id)), "=", kvs[0].ModRevision)},
			s.updateOps(id, r, nodeBefore, u)})
		batched = append(batched, id)
	}
	for i, res := range s.group.commitAll(ctx, txns) {
		if res.err != nil {
			return fmt.Errorf("update instance %s: %w", batched[i], res.err)
		}
		if res.ok {
			continue
		}
		if _, err := s.UpdateInstance(ctx, batched[i], fn); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	return nil
}

// PurgeFinished deletes instances Terminated longer than retention ago, so
// the database does not grow without bound. It returns how many it deleted.
func (s *Store) PurgeFinished(ctx context.Context, retention time.Duration) (int, error) {
	cutoff := time.Now().Add(-retention)
	expired := func(r InstanceRecord) (bool, error) { return r.Finished() && !r.FinishedAt.After(cutoff), nil }
	also := func(r InstanceRecord) []clientv3.Op {
		return []clientv3.Op{clientv3.OpDelete(s.consoleKey(r.InstanceID))}
	}
	if v := s.view; v != nil {
		// The view's records, not a read and decode of every instance every
		// few seconds: each delete compares the revision it saw, so a record
		// changed since (or a view behind etcd) only waits for the next round.
		var items []purgeItem[InstanceRecord]
		v.mu.RLock()
		synced := v.synced
		for id, in := range v.instances {
			if ok, _ := expired(in.InstanceRecord); ok {
				items = append(items, purgeItem[InstanceRecord]{s.instanceKey(id), in.ModRev, in.InstanceRecord})
			}
		}
		v.mu.RUnlock()
		if synced {
			return purgeItems(ctx, s, "instances/", items, expired, also)
		}
	}
	return purge(ctx, s, "instances/", expired, also)
}

// purgeItem is a record purge may delete: its key and the revision it was
// read at.
type purgeItem[T any] struct {
	key string
	rev int64
	v   T
}

// purge deletes the records under prefix that expired says may go, each
// only if unchanged since it was read, up to purgeBatch records a
// transaction (one etcd revision for many; a batch in which one changed is
// tried one record at a time). expired may also act on a record. also,
// when set, names more deletes for the same transaction.
func purge[T any](ctx context.Context, s *Store, prefix string, expired func(T) (bool, error), also func(T) []clientv3.Op) (int, error) {
	resp, err := s.cli.Get(ctx, s.prefix+prefix, clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("list %s: %w", prefix, err)
	}
	items := make([]purgeItem[T], 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var v T
		if json.Unmarshal(kv.Value, &v) == nil {
			items = append(items, purgeItem[T]{string(kv.Key), kv.ModRevision, v})
		}
	}
	return purgeItems(ctx, s, prefix, items, expired, also)
}

// purgeItems is purge of records already read (from etcd, or the view).
func purgeItems[T any](ctx context.Context, s *Store, prefix string, items []purgeItem[T], expired func(T) (bool, error), also func(T) []clientv3.Op) (int, error) {
	type gone struct {
		cmp clientv3.Cmp
		ops []clientv3.Op
	}
	n := 0
	commit := func(batch []gone) (bool, error) {
		var cmps []clientv3.Cmp
		var ops []clientv3.Op
		for _, g := range batch {
			cmps, ops = append(cmps, g.cmp), append(ops, g.ops...)
		}
		resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return false, fmt.Errorf("purge %s: %w", prefix, err)
		}
		if resp.Succeeded {
			n += len(batch)
		}
		return resp.Succeeded, nil
	}
	flush := func(batch []gone) error {
		if len(batch) == 0 {
			return nil
		}
		if ok, err := commit(batch); ok || err != nil || len(batch) == 1 {
			return err
		}
		for _, g := range batch { // one changed meanwhile: it is judged again next time
			if _, err := commit([]gone{g}); err != nil {
				return err
			}
		}
		return nil
	}
	var batch []gone
	for _, it := range items {
		if ok, err := expired(it.v); err != nil || !ok {
			if err != nil {
				return n, err
			}
			continue
		}
		ops := []clientv3.Op{clientv3.OpDelete(it.key)}
		if also != nil {
			ops = append(ops, also(it.v)...)
		}
		batch = append(batch, gone{clientv3.Compare(clientv3.ModRevision(it.key), "=", it.rev), ops})
		if len(batch) == purgeBatch {
			if err := flush(batch); err != nil {
				return n, err
			}
			batch = batch[:0]
		}
	}
	return n, flush(batch)
}

// purgeBatch keeps a purge transaction's operations under etcd's default
// cap of 128 (a record and up to one more delete each).
const purgeBatch = 50

// Assignments returns a node's desired instances and the revision read at.
func (s *Store) Assignments(ctx context.Context, node string) ([]apiv1.Assignment, int64, error) {
	return list[apiv1.Assignment](ctx, s.cli, s.assignPrefix(node))
}

// IdempotencyRecord is what a start's Idempotency-Key stands for: the
// request's fingerprint and, once created, its instance ids.
type IdempotencyRecord struct {
	Fingerprint string   `json:"fingerprint"`
	IDs         []string `json:"ids,omitempty"`
}

func idempotencyKey(keyHash string) string { return "idempotency/" + keyHash }

// ClaimIdempotencyKey records that a request with this key (its hash) is
// under way, unless the key exists: then it returns the existing record.
func (s *Store) ClaimIdempotencyKey(ctx context.Context, keyHash, fingerprint string, ttl time.Duration) (IdempotencyRecord, bool, error) {
	var prev IdempotencyRecord
	rel := idempotencyKey(keyHash)
	lease, err := s.cli.Grant(ctx, int64(ttl/time.Second))
	if err != nil {
		return prev, false, fmt.Errorf("idempotency key: %w", err)
	}
	key := s.prefix + rel
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, mustJSON(IdempotencyRecord{Fingerprint: fingerprint}), clientv3.WithLease(lease.ID))).
		Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return prev, false, fmt.Errorf("idempotency key: %w", err)
	}
	if resp.Succeeded {
		return prev, true, nil
	}
	_, _ = s.cli.Revoke(ctx, lease.ID)
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 || json.Unmarshal(kvs[0].Value, &prev) != nil {
		return prev, false, fmt.Errorf("idempotency key: unreadable record")
	}
	return prev, false, nil
}

// CompleteIdempotencyKey stores the ids a keyed request created.
func (s *Store) CompleteIdempotencyKey(ctx context.Context, keyHash, fingerprint string, ids []string, ttl time.Duration) error {
	return s.putExpiring(ctx, idempotencyKey(keyHash), mustJSON(IdempotencyRecord{Fingerprint: fingerprint, IDs: ids}), ttl)
}

// ReleaseIdempotencyKey forgets a key whose request failed, so a retry runs.
func (s *Store) ReleaseIdempotencyKey(ctx context.Context, keyHash string) {
	_, _ = s.cli.Delete(ctx, s.prefix+idempotencyKey(keyHash))
}
