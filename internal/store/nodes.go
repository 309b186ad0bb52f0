package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// NodeRecord is a node as stored: its latest report plus admin settings.
type NodeRecord struct {
	Report           apiv1.NodeReport `json:"report"`
	CapacityOverride *int             `json:"capacity_override,omitempty"` // nil = use the reported capacity
	MaxVCPU          int              `json:"max_vcpu,omitempty"`
	MaxVRAM          int              `json:"max_vram,omitempty"`
	Drain            bool             `json:"drain,omitempty"`
	Groups           []string         `json:"groups"` // group ids
	LeaseID          int64            `json:"lease_id"`
	JoinedAt         time.Time        `json:"joined_at"`
	ReportedAt       time.Time        `json:"reported_at,omitzero"`
	// CredentialHash is the SHA-256 of the node's own credential, issued
	// at its last join.
	CredentialHash string `json:"credential_hash,omitempty"`
}

// Capacity is the number of instance slots the node offers.
func (n NodeRecord) Capacity() int {
	if n.CapacityOverride != nil {
		return *n.CapacityOverride
	}
	return n.Report.Capacity
}

// InGroup reports whether the node belongs to group id.
func (n NodeRecord) InGroup(id string) bool {
	for _, g := range n.Groups {
		if g == id {
			return true
		}
	}
	return false
}

// GetNode returns a node record.
func (s *Store) GetNode(ctx context.Context, id string) (NodeRecord, error) {
	var n NodeRecord
	_, err := s.get(ctx, s.nodeKey(id), &n)
	return n, err
}

// GetNodeRev returns a node record and its revision, from etcd.
func (s *Store) GetNodeRev(ctx context.Context, id string) (NodeRecord, int64, error) {
	var n NodeRecord
	rev, err := s.get(ctx, s.nodeKey(id), &n)
	return n, rev, err
}

// ListNodes returns every registered node.
func (s *Store) ListNodes(ctx context.Context) ([]NodeRecord, error) {
	nodes, _, err := list[NodeRecord](ctx, s.cli, s.prefix+"nodes/")
	return nodes, err
}

// UpdateNode changes a node record atomically.
func (s *Store) UpdateNode(ctx context.Context, id string, fn func(*NodeRecord) error) (NodeRecord, error) {
	return update(ctx, s, s.nodeKey(id), func(n *NodeRecord) ([]clientv3.Op, error) { return nil, fn(n) })
}

// JoinNode registers the node (keeping admin settings of an earlier join) and
// binds a fresh lease of ttl seconds to its alive key.
func (s *Store) JoinNode(ctx context.Context, report apiv1.NodeReport, groups []string, ttl int64) (int64, error) {
	return s.Join(ctx, NodeJoin{Report: report, Groups: groups, TTL: ttl})
}

// NodeJoin is one node's join.
type NodeJoin struct {
	Report apiv1.NodeReport
	Groups []string // group ids a node joins on its first registration
	TTL    int64    // the lease's seconds
	// CredentialHash replaces the node's credential (its hash) in the same
	// transaction as the join; "" keeps the stored one.
	CredentialHash string
	// Admit, when set, sees the record of a node already registered under
	// the id (nil for a new node) and refuses the join with an error. It
	// runs against the revision the join commits on, so no other join
	// lands between the check and the write.
	Admit func(existing *NodeRecord) error
}

// Join registers a node as j says and returns its new lease. A refused
// join leaves nothing behind, its lease included.
func (s *Store) Join(ctx context.Context, j NodeJoin) (lease int64, err error) {
	key := s.nodeKey(j.Report.NodeID)
	var granted clientv3.LeaseID
	defer func() {
		if err != nil && granted != 0 {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_, _ = s.cli.Revoke(rctx, granted)
			cancel()
		}
	}()
	for {
		var rec NodeRecord
		rev, err := s.get(ctx, key, &rec)
		if err != nil && err != ErrNotFound {
			return 0, err
		}
		known := err == nil
		if j.Admit != nil {
			existing := &rec
			if !known {
				existing = nil
			}
			if err := j.Admit(existing); err != nil {
				return 0, err
			}
		}
		if !known {
			rec = NodeRecord{Groups: j.Groups, JoinedAt: time.Now().UTC()}
		}
		if granted == 0 {
			l, err := s.cli.Grant(ctx, j.TTL)
			if err != nil {
				return 0, fmt.Errorf("grant lease for node %s: %w", j.Report.NodeID, err)
			}
			granted = l.ID
		}
		rec.Report = j.Report
		rec.ReportedAt = time.Now().UTC()
		rec.LeaseID = int64(granted)
		if j.CredentialHash != "" {
			rec.CredentialHash = j.CredentialHash
		}
		resp, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
			Then(clientv3.OpPut(key, mustJSON(rec)),
				clientv3.OpPut(s.aliveKey(j.Report.NodeID), fmt.Sprint(int64(granted)), clientv3.WithLease(granted))).
			Commit()
		if err != nil {
			return 0, fmt.Errorf("join node %s: %w", j.Report.NodeID, err)
		}
		if resp.Succeeded {
			return int64(granted), nil
		}
	}
}

// ErrLeaseExpired means the node must join again.
var ErrLeaseExpired = fmt.Errorf("node lease expired")

// ReleaseLease ends a node's lease now (the node is leaving): its alive key
// goes with it, so the node is Offline at once instead of after the TTL.
func (s *Store) ReleaseLease(ctx context.Context, leaseID int64) error {
	_, err := s.cli.Revoke(ctx, clientv3.LeaseID(leaseID))
	if err == rpctypes.ErrLeaseNotFound {
		return nil
	}
	if err != nil {
		return fmt.Errorf("revoke lease %x: %w", leaseID, err)
	}
	return nil
}

// AliveNodes returns the ids of nodes whose lease is live.
func (s *Store) AliveNodes(ctx context.Context) (map[string]bool, error) {
	resp, err := s.cli.Get(ctx, s.prefix+"alive/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("list alive nodes: %w", err)
	}
	alive := make(map[string]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		alive[strings.TrimPrefix(string(kv.Key), s.prefix+"alive/")] = true
	}
	return alive, nil
}

// DeleteNode removes a node, revoking its lease.
func (s *Store) DeleteNode(ctx context.Context, id string) error {
	for {
		var rec NodeRecord
		rev, err := s.get(ctx, s.nodeKey(id), &rec)
		if err != nil {
			return err
		}
		ops := []clientv3.Op{clientv3.OpDelete(s.nodeKey(id))}
		var tomb clientv3.LeaseID
		if rec.CredentialHash != "" {
			// The node's credential outlives it for a day, so its agent
			// hears "disjoined" (and stops) where a stranger hears 401.
			l, err := s.cli.Grant(ctx, int64(DisjoinedMemory/time.Second))
			if err != nil {
				return fmt.Errorf("delete node %s: %w", id, err)
			}
			tomb = l.ID
			ops = append(ops, clientv3.OpPut(s.disjoinedKey(id), rec.CredentialHash, clientv3.WithLease(tomb)))
		}
		resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(s.nodeKey(id)), "=", rev)).Then(ops...).Commit()
		if err != nil || !resp.Succeeded {
			if tomb != 0 {
				_, _ = s.cli.Revoke(ctx, tomb)
			}
			if err != nil {
				return fmt.Errorf("delete node %s: %w", id, err)
			}
			continue // the node changed meanwhile (a report): again
		}
		if rec.LeaseID != 0 {
			_, _ = s.cli.Revoke(ctx, clientv3.LeaseID(rec.LeaseID)) // already expired is fine
		}
		return nil
	}
}

// DisjoinedMemory is how long a disjoined node's credential is remembered.
const DisjoinedMemory = 24 * time.Hour

// DisjoinedCredential is the credential hash of a node disjoined within
// DisjoinedMemory; ErrNotFound otherwise.
func (s *Store) DisjoinedCredential(ctx context.Context, id string) (string, error) {
	return s.value(ctx, "disjoined/"+id)
}

// AlivePrefix is the watched prefix for node liveness changes.
func (s *Store) AlivePrefix() string { return s.prefix + "alive/" }

// NodeIDFromAliveKey extracts the node id from an alive key.
func (s *Store) NodeIDFromAliveKey(key string) string {
	return strings.TrimPrefix(key, s.AlivePrefix())
}
