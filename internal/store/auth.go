package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Auth keys (under the prefix):
//
//	apikeys/<id>        PEM public key of an API key
//	auth/hand/<id>/<hash>     a pending handshake: its secret's SHA-256 (lease-bound, 60 s)
//	auth/session/<id>/<sid>   SHA-256 of a session token issued to key <id> (lease-bound)
//
// Secrets are stored hashed: a copy of etcd holds nothing usable as a
// credential.

// PutAPIKey stores an API key's public key.
func (s *Store) PutAPIKey(ctx context.Context, id, publicPEM string) error {
	_, err := s.cli.Put(ctx, s.prefix+"apikeys/"+id, publicPEM)
	return err
}

// APIKey returns an API key's public key PEM.
func (s *Store) APIKey(ctx context.Context, id string) (string, error) {
	return s.value(ctx, "apikeys/"+id)
}

// APIKeys lists API key ids.
func (s *Store) APIKeys(ctx context.Context) ([]string, error) {
	resp, err := s.cli.Get(ctx, s.prefix+"apikeys/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, kv := range resp.Kvs {
		ids = append(ids, strings.TrimPrefix(string(kv.Key), s.prefix+"apikeys/"))
	}
	return ids, nil
}

// DeleteAPIKey removes an API key and, in the same transaction, every
// session issued to it: a deleted key stops working at once.
func (s *Store) DeleteAPIKey(ctx context.Context, id string) error {
	key := s.prefix + "apikeys/" + id
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), ">", 0)).
		Then(clientv3.OpDelete(key), clientv3.OpDelete(s.prefix+"auth/hand/"+id+"/", clientv3.WithPrefix()),
			clientv3.OpDelete(s.prefix+SessionPrefix(id), clientv3.WithPrefix())).Commit()
	if err != nil {
		return fmt.Errorf("delete api key %s: %w", id, err)
	}
	if !resp.Succeeded {
		return ErrNotFound
	}
	return nil
}

// SessionPrefix is where the sessions of API key id live (relative).
func SessionPrefix(id string) string { return "auth/session/" + id + "/" }

// PutExpiring stores a value that etcd deletes after ttl.
func (s *Store) PutExpiring(ctx context.Context, rel, value string, ttl time.Duration) error {
	lease, err := s.cli.Grant(ctx, int64(max(ttl/time.Second, 1)))
	if err != nil {
		return fmt.Errorf("grant lease for %s: %w", rel, err)
	}
	_, err = s.cli.Put(ctx, s.prefix+rel, value, clientv3.WithLease(lease.ID))
	return err
}

// TakeExpiring returns and deletes a value (a handshake secret is single-use).
func (s *Store) TakeExpiring(ctx context.Context, rel string) (string, error) {
	resp, err := s.cli.Delete(ctx, s.prefix+rel, clientv3.WithPrevKV())
	if err != nil {
		return "", err
	}
	if len(resp.PrevKvs) == 0 {
		return "", ErrNotFound
	}
	return string(resp.PrevKvs[0].Value), nil
}

// Value returns a raw value.
func (s *Store) Value(ctx context.Context, rel string) (string, error) { return s.value(ctx, rel) }

func (s *Store) value(ctx context.Context, rel string) (string, error) {
	resp, err := s.cli.Get(ctx, s.prefix+rel)
	if err != nil {
		return "", err
	}
	if len(resp.Kvs) == 0 {
		return "", ErrNotFound
	}
	return string(resp.Kvs[0].Value), nil
}
