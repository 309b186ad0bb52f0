package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Auth keys: apikeys/, auth/hand/, auth/session/, auth/dashboard/ (the
// layout is in store.go). Secrets are stored hashed: a copy of etcd holds
// nothing usable as a credential; the callers pass hashes.

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
			clientv3.OpDelete(s.prefix+sessionPrefix(id), clientv3.WithPrefix())).Commit()
	if err != nil {
		return fmt.Errorf("delete api key %s: %w", id, err)
	}
	if !resp.Succeeded {
		return ErrNotFound
	}
	return nil
}

// sessionPrefix is where the sessions of API key id live (relative).
func sessionPrefix(id string) string { return "auth/session/" + id + "/" }

// KeySessionRef names session sid of API key id (a dashboard session
// records which key session it stands on).
func KeySessionRef(id, sid string) string { return sessionPrefix(id) + sid }

// PutKeySession stores the hash of a session token issued to API key id;
// etcd deletes it after ttl.
func (s *Store) PutKeySession(ctx context.Context, id, sid, tokenHash string, ttl time.Duration) error {
	return s.putExpiring(ctx, KeySessionRef(id, sid), tokenHash, ttl)
}

// KeySession returns the token hash of a key session (ErrNotFound once it
// expired or its key was deleted).
func (s *Store) KeySession(ctx context.Context, ref string) (string, error) {
	if !strings.HasPrefix(ref, "auth/session/") {
		return "", ErrNotFound
	}
	return s.value(ctx, ref)
}

// PutHandshake records a pending API-key handshake by its secret's hash;
// etcd deletes it after ttl.
func (s *Store) PutHandshake(ctx context.Context, id, secretHash string, ttl time.Duration) error {
	return s.putExpiring(ctx, "auth/hand/"+id+"/"+secretHash, "1", ttl)
}

// TakeHandshake consumes a pending handshake (single use); ErrNotFound when
// there is none.
func (s *Store) TakeHandshake(ctx context.Context, id, secretHash string) error {
	_, err := s.takeExpiring(ctx, "auth/hand/"+id+"/"+secretHash)
	return err
}

// PutDashboardSession stores a dashboard session under its secret's hash;
// etcd deletes it after ttl.
func (s *Store) PutDashboardSession(ctx context.Context, secretHash, record string, ttl time.Duration) error {
	return s.putExpiring(ctx, "auth/dashboard/"+secretHash, record, ttl)
}

// DashboardSession returns a dashboard session's record.
func (s *Store) DashboardSession(ctx context.Context, secretHash string) (string, error) {
	return s.value(ctx, "auth/dashboard/"+secretHash)
}

// DeleteDashboardSession ends a dashboard session (log out).
func (s *Store) DeleteDashboardSession(ctx context.Context, secretHash string) error {
	_, err := s.takeExpiring(ctx, "auth/dashboard/"+secretHash)
	return err
}

// putExpiring stores a value that etcd deletes after ttl.
func (s *Store) putExpiring(ctx context.Context, rel, value string, ttl time.Duration) error {
	lease, err := s.cli.Grant(ctx, int64(max(ttl/time.Second, 1)))
	if err != nil {
		return fmt.Errorf("grant lease for %s: %w", rel, err)
	}
	_, err = s.cli.Put(ctx, s.prefix+rel, value, clientv3.WithLease(lease.ID))
	return err
}

// takeExpiring returns and deletes a value.
func (s *Store) takeExpiring(ctx context.Context, rel string) (string, error) {
	resp, err := s.cli.Delete(ctx, s.prefix+rel, clientv3.WithPrevKV())
	if err != nil {
		return "", err
	}
	if len(resp.PrevKvs) == 0 {
		return "", ErrNotFound
	}
	return string(resp.PrevKvs[0].Value), nil
}

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
