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
	lease, err := s.cli.Grant(ctx, ttl)
	if err != nil {
		return 0, fmt.Errorf("grant lease for node %s: %w", report.NodeID, err)
	}
	key := s.nodeKey(report.NodeID)
	for {
		var rec NodeRecord
		rev, err := s.get(ctx, key, &rec)
		if err != nil && err != ErrNotFound {
			return 0, err
		}
		if err == ErrNotFound {
			rec = NodeRecord{Groups: groups, JoinedAt: time.Now().UTC()}
		}
		rec.Report = report
		rec.ReportedAt = time.Now().UTC()
		rec.LeaseID = int64(lease.ID)
		resp, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
			Then(clientv3.OpPut(key, mustJSON(rec)),
				clientv3.OpPut(s.aliveKey(report.NodeID), fmt.Sprint(lease.ID), clientv3.WithLease(lease.ID))).
			Commit()
		if err != nil {
			return 0, fmt.Errorf("join node %s: %w", report.NodeID, err)
		}
		if resp.Succeeded {
			return int64(lease.ID), nil
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
	rec, err := s.GetNode(ctx, id)
	if err != nil {
		return err
	}
	if _, err := s.cli.Delete(ctx, s.nodeKey(id)); err != nil {
		return fmt.Errorf("delete node %s: %w", id, err)
	}
	if rec.LeaseID != 0 {
		_, _ = s.cli.Revoke(ctx, clientv3.LeaseID(rec.LeaseID)) // already expired is fine
	}
	return nil
}

// AlivePrefix is the watched prefix for node liveness changes.
func (s *Store) AlivePrefix() string { return s.prefix + "alive/" }

// NodeIDFromAliveKey extracts the node id from an alive key.
func (s *Store) NodeIDFromAliveKey(key string) string {
	return strings.TrimPrefix(key, s.AlivePrefix())
}
