package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The event log's keys:
//
//	events/<rev:20>-<index:4>   apiv1.Event, in the order of the changes they record
//	eventq/<time>-<random>      apiv1.Event recorded directly (auth failures, leader
//	                            changes, template deletes); the recorder moves each
//	                            into events/ at its own revision
//	config/events-rev           the revision the recorder has applied up to
//	config/webhook-cursor       the last event id the webhook delivered
//	config/events-templates     the registry's templates and tags last seen
const (
	eventsDir          = "events/"
	eventQueueDir      = "eventq/"
	eventsCheckpoint   = "config/events-rev"
	webhookCursorKey   = "config/webhook-cursor"
	eventsTemplatesKey = "config/events-templates"
)

// EventsPrefix is where events live (the scheduler ignores writes there).
func (s *Store) EventsPrefix() string { return s.prefix + eventsDir }

// EventQueuePrefix is where directly recorded events wait for the recorder.
func (s *Store) EventQueuePrefix() string { return s.prefix + eventQueueDir }

// IsEventKey reports whether key belongs to the event log's bookkeeping, whose
// writes change nothing the scheduler plans from.
func (s *Store) IsEventKey(key string) bool {
	rel := key[min(len(key), len(s.prefix)):]
	return strings.HasPrefix(rel, eventsDir) || strings.HasPrefix(rel, eventQueueDir) ||
		rel == eventsCheckpoint || rel == webhookCursorKey || rel == eventsTemplatesKey
}

func (s *Store) eventKey(id apiv1.EventID) string {
	return fmt.Sprintf("%s%s%020d-%04d", s.prefix, eventsDir, id.Rev, id.Index)
}

// EnqueueEvent records an event that no stored change implies (an auth
// failure, a leader change): one put, moved into the log by the recorder.
func (s *Store) EnqueueEvent(ctx context.Context, ev apiv1.Event) error {
	if _, err := s.cli.Put(ctx, s.queueKey(), mustJSON(ev)); err != nil {
		return fmt.Errorf("record event %s: %w", ev.Type, err)
	}
	return nil
}

func (s *Store) queueKey() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return s.prefix + eventQueueDir + strconv.FormatInt(time.Now().UnixNano(), 10) + "-" + hex.EncodeToString(b[:])
}

// OldestQueuedEvent is the revision of the oldest queued event (0: none).
func (s *Store) OldestQueuedEvent(ctx context.Context) (int64, error) {
	resp, err := s.cli.Get(ctx, s.prefix+eventQueueDir, clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortAscend), clientv3.WithLimit(1))
	if err != nil {
		return 0, fmt.Errorf("read queued events: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return 0, nil
	}
	return resp.Kvs[0].ModRevision, nil
}

// EventsCheckpoint is the revision the recorder applied up to (0, false when
// it never ran on this etcd).
func (s *Store) EventsCheckpoint(ctx context.Context) (int64, bool, error) {
	resp, err := s.cli.Get(ctx, s.prefix+eventsCheckpoint)
	if err != nil {
		return 0, false, fmt.Errorf("read events checkpoint: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return resp.Header.Revision, false, nil
	}
	rev, err := strconv.ParseInt(string(resp.Kvs[0].Value), 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("decode events checkpoint: %w", err)
	}
	return rev, true, nil
}

// AppendEvents writes events (their IDs set), deletes the queued entries
// they came from and moves the checkpoint to rev, all only while fence (the
// leader key) holds. Keys are the events' ids, so writing the same events
// again (a recorder resuming from an older checkpoint) changes nothing.
func (s *Store) AppendEvents(ctx context.Context, fence clientv3.Cmp, evs []apiv1.Event, consumed []string, rev int64) error {
	const maxOps = 100
	ops := make([]clientv3.Op, 0, maxOps+1)
	flush := func(final bool) error {
		if final {
			ops = append(ops, clientv3.OpPut(s.prefix+eventsCheckpoint, strconv.FormatInt(rev, 10)))
		}
		if len(ops) == 0 {
			return nil
		}
		resp, err := s.cli.Txn(ctx).If(fence).Then(ops...).Commit()
		if err != nil {
			return fmt.Errorf("append events: %w", err)
		}
		if !resp.Succeeded {
			return ErrNotLeader
		}
		ops = ops[:0]
		return nil
	}
	for _, ev := range evs {
		id, err := apiv1.ParseEventID(ev.ID)
		if err != nil {
			return fmt.Errorf("append event: %w", err)
		}
		ops = append(ops, clientv3.OpPut(s.eventKey(id), mustJSON(ev)))
		if len(ops) == maxOps {
			if err := flush(false); err != nil {
				return err
			}
		}
	}
	for _, k := range consumed {
		ops = append(ops, clientv3.OpDelete(k))
		if len(ops) == maxOps {
			if err := flush(false); err != nil {
				return err
			}
		}
	}
	return flush(true)
}

// ErrNotLeader: a fenced write found another controller leading.
var ErrNotLeader = fmt.Errorf("no longer the scheduler leader")

// EventQuery selects events. After, when set, asks for those after it in
// order (oldest first); otherwise the newest Limit are answered, oldest first.
type EventQuery struct {
	After      *apiv1.EventID
	Since      time.Time // events at or after this time
	Type       string    // exact type or kind
	InstanceID string
	NodeID     string
	Limit      int
}

func (q EventQuery) match(ev apiv1.Event) bool {
	return apiv1.MatchesType(ev.Type, q.Type) &&
		(q.InstanceID == "" || ev.InstanceID == q.InstanceID) &&
		(q.NodeID == "" || ev.NodeID == q.NodeID) &&
		(q.Since.IsZero() || !ev.Time.Before(q.Since))
}

// ListEvents answers a query, reading pages of the log until Limit match.
func (s *Store) ListEvents(ctx context.Context, q EventQuery) ([]apiv1.Event, error) {
	const pageSize = 500
	if q.Limit <= 0 {
		q.Limit = 100
	}
	dir := s.prefix + eventsDir
	end := clientv3.GetPrefixRangeEnd(dir)
	var out []apiv1.Event
	if q.After != nil {
		from := s.eventKey(apiv1.EventID{Rev: q.After.Rev, Index: q.After.Index + 1})
		for len(out) < q.Limit {
			resp, err := s.cli.Get(ctx, from, clientv3.WithRange(end), clientv3.WithLimit(pageSize))
			if err != nil {
				return nil, fmt.Errorf("list events: %w", err)
			}
			for _, kv := range resp.Kvs {
				var ev apiv1.Event
				if json.Unmarshal(kv.Value, &ev) == nil && q.match(ev) {
					out = append(out, ev)
					if len(out) == q.Limit {
						break
					}
				}
			}
			if !resp.More || len(resp.Kvs) == 0 {
				break
			}
			from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
		return out, nil
	}
	// Newest first, then reversed.
	to := end
	for len(out) < q.Limit {
		resp, err := s.cli.Get(ctx, dir, clientv3.WithRange(to), clientv3.WithLimit(pageSize),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend))
		if err != nil {
			return nil, fmt.Errorf("list events: %w", err)
		}
		stop := false
		for _, kv := range resp.Kvs {
			var ev apiv1.Event
			if json.Unmarshal(kv.Value, &ev) != nil {
				continue
			}
			if !q.Since.IsZero() && ev.Time.Before(q.Since) {
				stop = true // older ones are older still
				break
			}
			if q.match(ev) {
				out = append(out, ev)
				if len(out) == q.Limit {
					break
				}
			}
		}
		if stop || !resp.More || len(resp.Kvs) == 0 {
			break
		}
		to = string(resp.Kvs[len(resp.Kvs)-1].Key)
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}

// Decode reads a stored record (for watchers of the store's keys).
func Decode(value []byte, v any) error { return json.Unmarshal(value, v) }

// DecodeEvent reads an event's stored value.
func DecodeEvent(value []byte) (apiv1.Event, error) {
	var ev apiv1.Event
	err := json.Unmarshal(value, &ev)
	return ev, err
}

// EventLog is the recorder's index of the stored log's keys, oldest first,
// so keeping the log within its bounds costs what it deletes: etcd visits
// every key of a range to count it, even under a limit, so counting the log
// and reading its oldest page on every trim cost two passes over the whole
// log (7.9% of a controller's CPU in the scale benchmark at 10,000 events,
// and linear in --event-retention-count). Only the recorder adds or removes
// events, fenced on the leader key, so the index stays exact while the
// fence holds; a recorder that loses it starts over with a fresh index.
type EventLog struct {
	s    *Store
	keys []string // keys[first:] are the stored events' keys, in order
	// first is where the log starts in keys: trimmed keys are dropped
	// from the front, and the slice copied down once half of it is gone.
	first int
}

// LoadEventLog reads the stored log's keys.
func (s *Store) LoadEventLog(ctx context.Context) (*EventLog, error) {
	dir := s.prefix + eventsDir
	resp, err := s.cli.Get(ctx, dir, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("read event log keys: %w", err)
	}
	l := &EventLog{s: s, keys: make([]string, len(resp.Kvs))}
	for i, kv := range resp.Kvs {
		l.keys[i] = string(kv.Key)
	}
	return l, nil
}

// Len is how many events the log holds.
func (l *EventLog) Len() int { return len(l.keys) - l.first }

// Appended records events AppendEvents stored. Events come in id order; one
// already in the log (written again by a recorder resuming from an older
// checkpoint) is not added twice.
func (l *EventLog) Appended(evs []apiv1.Event) {
	for _, ev := range evs {
		id, err := apiv1.ParseEventID(ev.ID)
		if err != nil {
			continue // AppendEvents refused it
		}
		key := l.s.eventKey(id)
		if n := len(l.keys); n == l.first || key > l.keys[n-1] {
			l.keys = append(l.keys, key)
			continue
		}
		if i, found := slices.BinarySearch(l.keys[l.first:], key); !found {
			l.keys = slices.Insert(l.keys, l.first+i, key)
		}
	}
}

// Trim keeps the log within maxCount events and maxAge, deleting the oldest
// first, while fence holds. It answers how many it deleted.
func (l *EventLog) Trim(ctx context.Context, fence clientv3.Cmp, maxCount int, maxAge time.Duration) (int, error) {
	live := l.keys[l.first:]
	n := max(0, len(live)-maxCount)
	if maxAge > 0 {
		// Past the age bound: read the oldest kept events a page at a
		// time (a range bounded by their keys) until one is younger; the
		// first page is the oldest one alone, which is usually young.
		cutoff := time.Now().Add(-maxAge)
		page := 1
	pages:
		for n < len(live) {
			lo, hi := n, min(len(live), n+page)
			page = 100
			resp, err := l.s.cli.Get(ctx, live[lo], clientv3.WithRange(live[hi-1]+"\x00"))
			if err != nil {
				return 0, fmt.Errorf("read oldest events: %w", err)
			}
			for _, kv := range resp.Kvs {
				ev, err := DecodeEvent(kv.Value)
				if err != nil || !ev.Time.Before(cutoff) {
					break pages
				}
				n++
			}
			if len(resp.Kvs) < hi-lo {
				break // the index and the store disagree: trim no further
			}
		}
	}
	deleted := 0
	for deleted < n {
		upto := min(n, deleted+1000) // a bounded transaction
		tr, err := l.s.cli.Txn(ctx).If(fence).Then(
			clientv3.OpDelete(l.s.prefix+eventsDir, clientv3.WithRange(live[upto-1]+"\x00"))).Commit()
		if err != nil {
			return deleted, fmt.Errorf("trim events: %w", err)
		}
		if !tr.Succeeded {
			return deleted, ErrNotLeader
		}
		l.first += upto - deleted
		deleted = upto
	}
	if l.first > len(l.keys)/2 {
		kept := copy(l.keys, l.keys[l.first:])
		clear(l.keys[kept:])
		l.keys, l.first = l.keys[:kept], 0
	}
	return deleted, nil
}

// WebhookCursor is the id of the last event the webhook delivered.
func (s *Store) WebhookCursor(ctx context.Context) (string, error) {
	resp, err := s.cli.Get(ctx, s.prefix+webhookCursorKey)
	if err != nil {
		return "", fmt.Errorf("read webhook cursor: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[0].Value), nil
}

// SetWebhookCursor records the last delivered event, while fence holds.
func (s *Store) SetWebhookCursor(ctx context.Context, fence clientv3.Cmp, id string) error {
	resp, err := s.cli.Txn(ctx).If(fence).Then(clientv3.OpPut(s.prefix+webhookCursorKey, id)).Commit()
	if err != nil {
		return fmt.Errorf("write webhook cursor: %w", err)
	}
	if !resp.Succeeded {
		return ErrNotLeader
	}
	return nil
}

// SeenTemplate is what the recorder last saw of a registry template.
type SeenTemplate struct {
	LastPush int64    `json:"last_push"`
	Size     int64    `json:"size"`
	Tags     []string `json:"tags"`
}

// SeenTemplates is the registry's templates as the recorder last saw them.
func (s *Store) SeenTemplates(ctx context.Context) (map[string]SeenTemplate, bool, error) {
	var m map[string]SeenTemplate
	_, err := s.get(ctx, s.prefix+eventsTemplatesKey, &m)
	if err == ErrNotFound {
		return nil, false, nil
	}
	return m, err == nil, err
}

// EnqueueTemplateEvents queues template events with the new view of the
// registry, in one fenced transaction.
func (s *Store) EnqueueTemplateEvents(ctx context.Context, fence clientv3.Cmp, seen map[string]SeenTemplate, evs []apiv1.Event) error {
	ops := []clientv3.Op{clientv3.OpPut(s.prefix+eventsTemplatesKey, mustJSON(seen))}
	for _, ev := range evs {
		ops = append(ops, clientv3.OpPut(s.queueKey(), mustJSON(ev)))
	}
	for len(ops) > 0 {
		n := min(len(ops), 100)
		resp, err := s.cli.Txn(ctx).If(fence).Then(ops[:n]...).Commit()
		if err != nil {
			return fmt.Errorf("record template events: %w", err)
		}
		if !resp.Succeeded {
			return ErrNotLeader
		}
		ops = ops[n:]
	}
	return nil
}
