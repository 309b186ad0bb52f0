package store

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

const (
	joinTokenHashKey   = "config/join-token-hash"
	legacyJoinTokenKey = "config/join-token" // plaintext, before hashes
)

// JoinTokenHash returns the stored hash of the join token.
func (s *Store) JoinTokenHash(ctx context.Context) (string, error) {
	return s.value(ctx, joinTokenHashKey)
}

// SetJoinTokenHash replaces the join token (by its hash), dropping a
// plaintext one left by older controllers.
func (s *Store) SetJoinTokenHash(ctx context.Context, hash string) error {
	_, err := s.cli.Txn(ctx).Then(clientv3.OpPut(s.prefix+joinTokenHashKey, hash), clientv3.OpDelete(s.prefix+legacyJoinTokenKey)).Commit()
	if err != nil {
		return fmt.Errorf("store join token: %w", err)
	}
	return nil
}

// InitJoinToken makes fresh the join token (by hashOf(fresh)) unless one
// exists. A plaintext token older controllers stored is hashed in its place
// and returned, the last time anyone can read it. created says fresh was
// stored; token is "" when an existing token is known only by its hash.
func (s *Store) InitJoinToken(ctx context.Context, fresh string, hashOf func(string) string) (token string, created bool, err error) {
	hk, lk := s.prefix+joinTokenHashKey, s.prefix+legacyJoinTokenKey
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(hk), "=", 0), clientv3.Compare(clientv3.CreateRevision(lk), "=", 0)).
		Then(clientv3.OpPut(hk, hashOf(fresh))).Else(clientv3.OpGet(lk)).Commit()
	if err != nil {
		return "", false, fmt.Errorf("join token: %w", err)
	}
	if resp.Succeeded {
		return fresh, true, nil
	}
	legacy := resp.Responses[0].GetResponseRange().Kvs
	if len(legacy) == 0 {
		return "", false, nil
	}
	old := string(legacy[0].Value)
	mig, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(lk), "=", legacy[0].ModRevision)).
		Then(clientv3.OpPut(hk, hashOf(old)), clientv3.OpDelete(lk)).Commit()
	if err != nil {
		return "", false, fmt.Errorf("hash the stored join token: %w", err)
	}
	if !mig.Succeeded {
		return "", false, nil // another controller migrated it meanwhile
	}
	return old, false, nil
}
