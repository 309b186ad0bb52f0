package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Distribution keys (under the prefix):
//
//	distribute/<node>/<request>   apiv1.Prefetch: a template the node should pull now
//	distributions/<request>       apiv1.Distribution: the request and each node's outcome

// CreateDistribution stores a request and one prefetch per node in one txn.
func (s *Store) CreateDistribution(ctx context.Context, d apiv1.Distribution, p apiv1.Prefetch) error {
	ops := []clientv3.Op{clientv3.OpPut(s.prefix+"distributions/"+d.RequestID, mustJSON(d))}
	for node := range d.Nodes {
		ops = append(ops, clientv3.OpPut(s.distributeKey(node, d.RequestID), mustJSON(p)))
	}
	if _, err := s.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
		return fmt.Errorf("create distribution %s: %w", d.RequestID, err)
	}
	return nil
}

func (s *Store) distributeKey(node, request string) string {
	return s.prefix + "distribute/" + node + "/" + request
}

// DistributePrefix is the watched prefix of a node's pending pulls.
func (s *Store) DistributePrefix(node string) string { return s.prefix + "distribute/" + node + "/" }

// GetDistribution returns a request's status.
func (s *Store) GetDistribution(ctx context.Context, id string) (apiv1.Distribution, error) {
	var d apiv1.Distribution
	_, err := s.get(ctx, s.prefix+"distributions/"+id, &d)
	return d, err
}

// FinishPrefetch records a node's outcome and removes its pending pull.
func (s *Store) FinishPrefetch(ctx context.Context, node, request, outcome string) error {
	_, err := update(ctx, s, s.prefix+"distributions/"+request, func(d *apiv1.Distribution) ([]clientv3.Op, error) {
		if _, ok := d.Nodes[node]; !ok {
			return nil, ErrNotFound
		}
		d.Nodes[node] = outcome
		d.TS = time.Now().UTC()
		return []clientv3.Op{clientv3.OpDelete(s.distributeKey(node, request))}, nil
	})
	return err
}

// PurgeFinishedDistributions deletes requests every node finished longer
// than retention ago, and ends the pending part of nodes that left the cloud.
func (s *Store) PurgeFinishedDistributions(ctx context.Context, retention time.Duration) (int, error) {
	cutoff := time.Now().Add(-retention)
	return purge(ctx, s, "distributions/", func(d apiv1.Distribution) (bool, error) {
		pending := false
		for node, outcome := range d.Nodes {
			if outcome != "pending" {
				continue
			}
			if _, err := s.GetNode(ctx, node); errors.Is(err, ErrNotFound) {
				err = s.FinishPrefetch(ctx, node, d.RequestID, "error: the node left the cloud")
				if err != nil && !errors.Is(err, ErrNotFound) {
					return false, err
				}
				continue
			}
			pending = true
		}
		return !pending && !d.TS.After(cutoff), nil
	}, nil)
}

// ListDistributions returns every request, oldest first.
func (s *Store) ListDistributions(ctx context.Context) ([]apiv1.Distribution, error) {
	ds, _, err := list[apiv1.Distribution](ctx, s.cli, s.prefix+"distributions/")
	return ds, err
}

// CancelDistribution drops a request and the pulls its nodes have not
// started (a pull under way finishes; its outcome finds no request).
func (s *Store) CancelDistribution(ctx context.Context, id string) error {
	var d apiv1.Distribution
	rev, err := s.get(ctx, s.prefix+"distributions/"+id, &d)
	if err != nil {
		return err
	}
	key := s.prefix + "distributions/" + id
	ops := []clientv3.Op{clientv3.OpDelete(key)}
	for node := range d.Nodes {
		ops = append(ops, clientv3.OpDelete(s.distributeKey(node, id)))
	}
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("cancel distribution %s: %w", id, err)
	}
	if !resp.Succeeded {
		return s.CancelDistribution(ctx, id) // changed meanwhile: read it again
	}
	return nil
}
