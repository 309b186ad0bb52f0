// Package store keeps all of Corral's controller state in etcd. Every mutation
// is a transaction that compares mod-revisions, so several controllers can
// share one etcd without locks.
//
// Key layout, under a prefix ("/corral/" by default). The store is the only
// code that builds these keys; everything else goes through its typed
// methods.
//
//	nodes/<node_id>                      NodeRecord: what the node reported + admin config
//	alive/<node_id>                      bound to the node's lease; absent = Offline
//	disjoined/<node_id>                  hash of a disjoined node's credential (24 h lease):
//	                                     its agent hears 410, a stranger 401
//	groups/<group_id>                    apiv1.Group
//	instances/<instance_id>              InstanceRecord
//	scripts/<request_id>                 a start's startup script, stored once for its instances
//	consoles/<instance_id>               the VM console's last lines
//	assign/<node_id>/<instance_id>       apiv1.Assignment: the instance holds a slot on the node;
//	                                     the node's whole desired state is this prefix with
//	distribute/<node_id>/<request_id>    apiv1.Prefetch: a template to pull (distribute) and
//	save/<node_id>/<request_id>          apiv1.ImageSave: an instance to save as a template
//	distributions/<request_id>           apiv1.Distribution: a distribute request's progress
//	images/<request_id>                  apiv1.Image: a save-image request's progress
//	idempotency/<sha256 of the key>      IdempotencyRecord of a start's Idempotency-Key (1 day lease)
//	apikeys/<id>                         PEM public key of an API key
//	auth/hand/<id>/<sha256>              a pending API-key handshake (60 s lease)
//	auth/session/<id>/<sid>              SHA-256 of a session token of key <id> (lease)
//	auth/dashboard/<sha256>              a dashboard session by its cookie's hash (lease)
//	permgroups/<name>                    apiv1.PermissionGroup
//	events/<rev:20>-<index:4>            apiv1.Event, in the order of the changes they record
//	eventq/<time>-<random>               apiv1.Event recorded directly, waiting for the recorder
//	config/join-token-hash               SHA-256 of the token nodes present to join
//	config/join-token                    the plaintext token of clouds from before hashes (read once)
//	config/events-rev                    the revision the event recorder has applied up to
//	config/webhook-cursor                the last event id the webhook delivered
//	config/events-templates              the registry's templates and tags last seen
//	election/scheduler                   scheduler leader election (clientv3/concurrency)
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// ErrNotFound is returned when a key does not exist.
var ErrNotFound = errors.New("not found")

// ErrExists is returned when creating what already exists.
var ErrExists = errors.New("already exists")

// Store is the typed view of Corral's etcd keys.
type Store struct {
	cli    *clientv3.Client
	prefix string
	view   *view // EnableView: reads from a watch-fed copy
	// viewHits, viewMisses: reads served by the view, and by etcd.
	viewHits, viewMisses atomic.Int64
	// viewLists counts the view's full reads: the first, then one per
	// watch it could not resume (compacted, or broken for good).
	viewLists atomic.Int64
	renew     renewer
	group     groupCommit // instance updates (creates commit on their own)
	scripts   scriptCache // stored startup scripts, immutable
}

// scriptCache keeps recently read startup scripts, up to 64 MiB: every
// long-poll answer carries its node's scripts.
type scriptCache struct {
	mu    sync.Mutex
	m     map[string][]byte
	order []string
	bytes int
}

const scriptCacheBytes = 64 << 20

func (c *scriptCache) get(ref string) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.m[ref]
	return b, ok
}

func (c *scriptCache) put(ref string, b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string][]byte{}
	}
	if _, ok := c.m[ref]; ok || len(b) > scriptCacheBytes {
		return
	}
	for c.bytes+len(b) > scriptCacheBytes && len(c.order) > 0 {
		old := c.order[0]
		c.order = c.order[1:]
		c.bytes -= len(c.m[old])
		delete(c.m, old)
	}
	c.m[ref], c.order, c.bytes = b, append(c.order, ref), c.bytes+len(b)
}

func (c *scriptCache) drop(ref string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b, ok := c.m[ref]; ok {
		c.bytes -= len(b)
		delete(c.m, ref)
		c.order = slices.DeleteFunc(c.order, func(r string) bool { return r == ref })
	}
}

// New returns a Store using keys under prefix ("/corral/" when empty).
func New(cli *clientv3.Client, prefix string) *Store {
	if prefix == "" {
		prefix = "/corral/"
	}
	return &Store{cli: cli, prefix: prefix, renew: renewer{cli: cli}, group: groupCommit{cli: cli}}
}

// Client exposes the etcd client for leader election and maintenance.
func (s *Store) Client() *clientv3.Client { return s.cli }

// Key returns the full key for a relative path. Only tests use it (to
// write around the store, or fence on a key of their own); code goes
// through the typed methods.
func (s *Store) Key(rel string) string { return s.prefix + rel }

// Election is the leader election called name (election/<name>), on the
// session's lease.
func (s *Store) Election(session *concurrency.Session, name string) *concurrency.Election {
	return concurrency.NewElection(session, s.prefix+"election/"+name)
}

// WatchAll watches every key of the store (the scheduler's trigger, the
// event log's source).
func (s *Store) WatchAll(ctx context.Context, opts ...clientv3.OpOption) clientv3.WatchChan {
	return s.cli.Watch(ctx, s.prefix, append([]clientv3.OpOption{clientv3.WithPrefix()}, opts...)...)
}

// Rel is a key of the store relative to its prefix ("instances/<id>").
func (s *Store) Rel(key string) string { return strings.TrimPrefix(key, s.prefix) }

func (s *Store) nodeKey(id string) string           { return s.prefix + "nodes/" + id }
func (s *Store) aliveKey(id string) string          { return s.prefix + "alive/" + id }
func (s *Store) disjoinedKey(id string) string      { return s.prefix + "disjoined/" + id }
func (s *Store) scriptKey(ref string) string        { return s.prefix + "scripts/" + ref }
func (s *Store) groupKey(id string) string          { return s.prefix + "groups/" + id }
func (s *Store) instanceKey(id string) string       { return s.prefix + "instances/" + id }
func (s *Store) assignPrefix(node string) string    { return s.prefix + "assign/" + node + "/" }
func (s *Store) assignKey(node, inst string) string { return s.assignPrefix(node) + inst }

// get decodes the value at key into v and returns its mod revision.
func (s *Store) get(ctx context.Context, key string, v any, opts ...clientv3.OpOption) (int64, error) {
	resp, err := s.cli.Get(ctx, key, opts...)
	if err != nil {
		return 0, fmt.Errorf("get %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return 0, ErrNotFound
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, v); err != nil {
		return 0, fmt.Errorf("decode %s: %w", key, err)
	}
	return resp.Kvs[0].ModRevision, nil
}

// list decodes every value under prefix, returning the revision read at.
func list[T any](ctx context.Context, cli *clientv3.Client, prefix string, opts ...clientv3.OpOption) ([]T, int64, error) {
	resp, err := cli.Get(ctx, prefix, append([]clientv3.OpOption{clientv3.WithPrefix()}, opts...)...)
	if err != nil {
		return nil, 0, fmt.Errorf("list %s: %w", prefix, err)
	}
	out := make([]T, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var v T
		if err := json.Unmarshal(kv.Value, &v); err != nil {
			return nil, 0, fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		out = append(out, v)
	}
	return out, resp.Header.Revision, nil
}

// update applies fn to the value at key and writes it back if nobody changed
// it meanwhile, retrying on conflict. extra ops join the same transaction.
func update[T any](ctx context.Context, s *Store, key string, fn func(*T) ([]clientv3.Op, error)) (T, error) {
	for {
		var v T
		rev, err := s.get(ctx, key, &v)
		if err != nil {
			return v, err
		}
		extra, err := fn(&v)
		if err != nil {
			return v, err
		}
		data, err := json.Marshal(v)
		if err != nil {
			return v, fmt.Errorf("encode %s: %w", key, err)
		}
		resp, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
			Then(append([]clientv3.Op{clientv3.OpPut(key, string(data))}, extra...)...).
			Commit()
		if err != nil {
			return v, fmt.Errorf("update %s: %w", key, err)
		}
		if resp.Succeeded {
			return v, nil
		}
		if err := ctx.Err(); err != nil {
			return v, err
		}
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("marshal %T: %v", v, err)) // only plain structs are stored
	}
	return string(b)
}

// deleteExisting deletes key, or returns ErrNotFound if it does not exist.
func (s *Store) deleteExisting(ctx context.Context, key, what string) error {
	resp, err := s.cli.Delete(ctx, key)
	if err != nil {
		return fmt.Errorf("delete %s: %w", what, err)
	}
	if resp.Deleted == 0 {
		return ErrNotFound
	}
	return nil
}
