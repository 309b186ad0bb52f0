package store

import (
	"context"
	"fmt"

	apiv1 "github.com/corral-build/corral/api/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func (s *Store) permissionGroupKey(name string) string { return s.prefix + "permgroups/" + name }

// ListPermissionGroups returns every permission group; one read, so that each
// authorized request costs one etcd range.
func (s *Store) ListPermissionGroups(ctx context.Context) ([]apiv1.PermissionGroup, error) {
	groups, _, err := list[apiv1.PermissionGroup](ctx, s.cli, s.prefix+"permgroups/")
	return groups, err
}

// PutPermissionGroup creates (create) or replaces a permission group; it
// fails with ErrExists or ErrNotFound when the name is taken or missing.
func (s *Store) PutPermissionGroup(ctx context.Context, g apiv1.PermissionGroup, create bool) error {
	key := s.permissionGroupKey(g.Name)
	cmp := clientv3.Compare(clientv3.CreateRevision(key), "!=", 0)
	if create {
		cmp = clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
	}
	resp, err := s.cli.Txn(ctx).If(cmp).Then(clientv3.OpPut(key, mustJSON(g))).Commit()
	switch {
	case err != nil:
		return fmt.Errorf("put permission group %s: %w", g.Name, err)
	case resp.Succeeded:
		return nil
	case create:
		return ErrExists
	}
	return ErrNotFound
}

// DeletePermissionGroup removes a permission group.
func (s *Store) DeletePermissionGroup(ctx context.Context, name string) error {
	return s.deleteExisting(ctx, s.permissionGroupKey(name), "permission group "+name)
}
