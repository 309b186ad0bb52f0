package store

import (
	"context"
	"fmt"

	apiv1 "github.com/corral-build/corral/api/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ListGroups returns every group.
func (s *Store) ListGroups(ctx context.Context) ([]apiv1.Group, error) {
	groups, _, err := list[apiv1.Group](ctx, s.cli, s.prefix+"groups/")
	return groups, err
}

// GetGroup returns one group.
func (s *Store) GetGroup(ctx context.Context, id string) (apiv1.Group, error) {
	var g apiv1.Group
	_, err := s.get(ctx, s.groupKey(id), &g)
	return g, err
}

// CreateGroup stores a new group; it fails if the id exists.
func (s *Store) CreateGroup(ctx context.Context, g apiv1.Group) error {
	key := s.groupKey(g.ID)
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, mustJSON(g))).Commit()
	if err != nil {
		return fmt.Errorf("create group %s: %w", g.Name, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("create group %s: id %s exists", g.Name, g.ID)
	}
	return nil
}

// UpdateGroup changes a group atomically.
func (s *Store) UpdateGroup(ctx context.Context, id string, fn func(*apiv1.Group) error) (apiv1.Group, error) {
	return update(ctx, s, s.groupKey(id), func(g *apiv1.Group) ([]clientv3.Op, error) { return nil, fn(g) })
}

// DeleteGroup removes a group.
func (s *Store) DeleteGroup(ctx context.Context, id string) error {
	return s.deleteExisting(ctx, s.groupKey(id), "group "+id)
}
