// Package events is the cloud's event log: a recorder on the scheduler
// leader turns changes in etcd (instances, nodes, liveness) and directly
// queued events (auth failures, leader changes, the registry's templates)
// into ordered entries under events/, keeps the log within its bounds, and
// delivers it to an optional webhook. Nothing here writes per heartbeat: a
// node's report becomes an event only when its drain or liveness changes.
package events

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/store"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Defaults of the log's bounds.
const (
	DefaultMaxCount = 10000
	DefaultMaxAge   = 7 * 24 * time.Hour
)

// Config bounds the log and names where templates come from.
type Config struct {
	// MaxCount and MaxAge bound the log (DefaultMaxCount, DefaultMaxAge).
	MaxCount int
	MaxAge   time.Duration
	// Templates lists the registry's templates and Template reads one's
	// tags (nil: no template events).
	Templates func(ctx context.Context) ([]apiv1.Template, error)
	Template  func(ctx context.Context, id string) (apiv1.TemplateDetail, error)
	// TemplatePoll is how often the registry is compared (30 s).
	TemplatePoll time.Duration
	// CheckpointEvery bounds how stale the checkpoint may get when no
	// event is written (30 s).
	CheckpointEvery time.Duration
}

// Recorder writes the event log while its controller leads.
type Recorder struct {
	st  *store.Store
	cfg Config
	log *slog.Logger
}

// NewRecorder returns a recorder; Run it while leading.
func NewRecorder(st *store.Store, cfg Config, log *slog.Logger) *Recorder {
	if cfg.MaxCount <= 0 {
		cfg.MaxCount = DefaultMaxCount
	}
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = DefaultMaxAge
	}
	if cfg.TemplatePoll <= 0 {
		cfg.TemplatePoll = 30 * time.Second
	}
	if cfg.CheckpointEvery <= 0 {
		cfg.CheckpointEvery = 30 * time.Second
	}
	return &Recorder{st: st, cfg: cfg, log: log}
}

// Run records until ctx ends or fence stops holding; it resumes from the
// stored checkpoint, so a new leader neither loses nor repeats events.
func (r *Recorder) Run(ctx context.Context, fence clientv3.Cmp) {
	if r.cfg.Templates != nil {
		go r.watchTemplates(ctx, fence)
	}
	for ctx.Err() == nil {
		err := r.record(ctx, fence)
		if errors.Is(err, store.ErrNotLeader) || ctx.Err() != nil {
			return
		}
		r.log.Warn("event recorder restarting", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (r *Recorder) record(ctx context.Context, fence clientv3.Cmp) error {
	applied, found, err := r.st.EventsCheckpoint(ctx)
	if err != nil {
		return err
	}
	// Never ran here: record from now on, not the history, but with the
	// events queued before this first start.
	from := applied + 1
	if !found {
		oldest, err := r.st.OldestQueuedEvent(ctx)
		if err != nil {
			return err
		}
		if oldest > 0 {
			from = min(from, oldest)
		}
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	watch := r.st.WatchAll(wctx, clientv3.WithPrevKV(), clientv3.WithRev(from))
	if !found {
		r.log.Info("event log starting", "revision", from)
	}
	written, lastTrim, lastCheckpoint, pending := 0, time.Now(), time.Now(), int64(0)
	elog, err := r.st.LoadEventLog(ctx)
	if err != nil {
		return err
	}
	if _, err := elog.Trim(ctx, fence, r.cfg.MaxCount, r.cfg.MaxAge); err != nil {
		return err
	}
	tick := time.NewTicker(r.cfg.CheckpointEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			if pending > 0 && time.Since(lastCheckpoint) >= r.cfg.CheckpointEvery {
				if err := r.st.AppendEvents(ctx, fence, nil, nil, pending); err != nil {
					return err
				}
				pending, lastCheckpoint = 0, time.Now()
			}
			if time.Since(lastTrim) > time.Minute {
				if _, err := elog.Trim(ctx, fence, r.cfg.MaxCount, r.cfg.MaxAge); err != nil {
					return err
				}
				lastTrim = time.Now()
			}
		case resp, ok := <-watch:
			if !ok {
				return errors.New("event watch closed")
			}
			if resp.CompactRevision != 0 {
				// What happened before the compaction is gone: say so, and
				// go on from the oldest revision etcd still has.
				lost := apiv1.Event{Time: time.Now().UTC(), Type: apiv1.EventEventsLost,
					Message: fmt.Sprintf("changes from revision %d to %d were compacted before they were recorded", from, resp.CompactRevision-1)}
				if err := r.st.EnqueueEvent(ctx, lost); err != nil {
					return err
				}
				if err := r.st.AppendEvents(ctx, fence, nil, nil, resp.CompactRevision-1); err != nil {
					return err
				}
				return fmt.Errorf("watch compacted at %d", resp.CompactRevision)
			}
			if err := resp.Err(); err != nil {
				if errors.Is(err, rpctypes.ErrCompacted) {
					return err
				}
				return fmt.Errorf("event watch: %w", err)
			}
			evs, consumed, last := r.derive(resp.Events)
			if last == 0 {
				continue
			}
			if len(evs) == 0 && len(consumed) == 0 {
				pending = last // only checkpointed now and then
				continue
			}
			if err := r.st.AppendEvents(ctx, fence, evs, consumed, last); err != nil {
				return err
			}
			elog.Appended(evs)
			pending, lastCheckpoint = 0, time.Now()
			written += len(evs)
			if written >= max(10, min(200, r.cfg.MaxCount/20)) {
				if _, err := elog.Trim(ctx, fence, r.cfg.MaxCount, r.cfg.MaxAge); err != nil {
					return err
				}
				written, lastTrim = 0, time.Now()
			}
		}
	}
}

// derive maps one watch response's changes to events, each id the change's
// revision and its index within it, so deriving again gives the same ids.
func (r *Recorder) derive(changes []*clientv3.Event) (evs []apiv1.Event, consumed []string, last int64) {
	index := map[int64]int{}
	now := time.Now().UTC()
	add := func(rev int64, ev apiv1.Event) {
		ev.ID = apiv1.EventID{Rev: rev, Index: index[rev]}.String()
		index[rev]++
		if ev.Time.IsZero() {
			ev.Time = now
		}
		evs = append(evs, ev)
	}
	joined := map[string]bool{} // node ids joined in this response
	for _, c := range changes {
		key := string(c.Kv.Key)
		rev := c.Kv.ModRevision
		last = max(last, rev)
		if r.st.IsEventKey(key) && !strings.HasPrefix(key, r.st.EventQueuePrefix()) {
			continue
		}
		rel := r.st.Rel(key)
		kind, id, _ := strings.Cut(rel, "/")
		put := c.Type == mvccpb.PUT
		switch kind {
		case "eventq":
			if !put {
				continue
			}
			ev, err := store.DecodeEvent(c.Kv.Value)
			if err == nil {
				add(rev, ev)
			}
			consumed = append(consumed, key)
		case "instances":
			if put {
				for _, ev := range instanceEvents(c.PrevKv, c.Kv.Value) {
					add(rev, ev)
				}
			}
		case "nodes":
			if !put {
				if c.PrevKv != nil {
					add(rev, apiv1.Event{Type: apiv1.EventNodeDisjoined, NodeID: id, Message: nodeName(c.PrevKv.Value)})
				}
				continue
			}
			for _, ev := range nodeEvents(id, c.PrevKv, c.Kv.Value) {
				if ev.Type == apiv1.EventNodeJoined {
					joined[id] = true
				}
				add(rev, ev)
			}
		case "alive":
			switch {
			case put && c.PrevKv == nil && !joined[id]:
				add(rev, apiv1.Event{Type: apiv1.EventNodeOnline, NodeID: id, State: apiv1.NodeActive})
			case !put:
				add(rev, apiv1.Event{Type: apiv1.EventNodeOffline, NodeID: id, State: apiv1.NodeOffline,
					Message: "node stopped reporting (its lease expired or it left)"})
			}
		}
	}
	return evs, consumed, last
}

func instanceEvents(prevKV *mvccpb.KeyValue, value []byte) []apiv1.Event {
	var cur store.InstanceRecord
	if store.Decode(value, &cur) != nil {
		return nil
	}
	base := apiv1.Event{InstanceID: cur.InstanceID, TemplateID: cur.VMID, Tag: cur.Tag, GroupID: cur.GroupID,
		NodeID: cur.NodeID, State: cur.State}
	with := func(typ, msg string) apiv1.Event { e := base; e.Type, e.Message = typ, msg; return e }
	if prevKV == nil {
		return []apiv1.Event{with(apiv1.EventInstanceRequested, cur.Message)}
	}
	var prev store.InstanceRecord
	if store.Decode(prevKV.Value, &prev) != nil {
		return nil
	}
	var out []apiv1.Event
	if prev.NodeID == "" && cur.NodeID != "" {
		out = append(out, with(apiv1.EventInstancePlaced, "placed on node "+cur.NodeID))
	}
	if cur.Restarts > prev.Restarts {
		out = append(out, with(apiv1.EventInstanceRestarted, "restart asked for"))
	}
	if cur.State != prev.State {
		switch cur.State {
		case apiv1.StatePulling:
			out = append(out, with(apiv1.EventInstancePulling, cur.Message))
		case apiv1.StateStarted:
			out = append(out, with(apiv1.EventInstanceStarted, cur.Message))
		case apiv1.StateError:
			out = append(out, with(apiv1.EventInstanceError, cur.Message))
		case apiv1.StateScheduling:
			out = append(out, with(apiv1.EventInstanceRequeued, cur.Message))
		case apiv1.StateTerminating:
			out = append(out, with(apiv1.EventInstanceTerminating, cur.Message))
		case apiv1.StateTerminated:
			out = append(out, with(apiv1.EventInstanceTerminated, cmp.Or(cur.Message, "terminated")))
		}
	}
	return out
}

func nodeEvents(id string, prevKV *mvccpb.KeyValue, value []byte) []apiv1.Event {
	var cur store.NodeRecord
	if store.Decode(value, &cur) != nil {
		return nil
	}
	if prevKV == nil {
		return []apiv1.Event{{Type: apiv1.EventNodeJoined, NodeID: id, State: apiv1.NodeActive,
			Message: "node " + cur.Report.NodeName + " joined"}}
	}
	var prev store.NodeRecord
	if store.Decode(prevKV.Value, &prev) != nil {
		return nil
	}
	switch {
	case cur.Drain && !prev.Drain:
		return []apiv1.Event{{Type: apiv1.EventNodeDrained, NodeID: id, State: apiv1.NodeDrain, Message: "no new instances"}}
	case !cur.Drain && prev.Drain:
		return []apiv1.Event{{Type: apiv1.EventNodeUndrained, NodeID: id, State: apiv1.NodeActive}}
	}
	return nil
}

func nodeName(value []byte) string {
	var n store.NodeRecord
	if store.Decode(value, &n) != nil {
		return ""
	}
	return "node " + n.Report.NodeName + " disjoined"
}

// watchTemplates compares the registry's templates and tags with what it
// saw last and queues pushed and deleted events for the differences.
func (r *Recorder) watchTemplates(ctx context.Context, fence clientv3.Cmp) {
	tick := time.NewTicker(r.cfg.TemplatePoll)
	defer tick.Stop()
	for {
		if err := r.compareTemplates(ctx, fence); errors.Is(err, store.ErrNotLeader) {
			return
		} else if err != nil && ctx.Err() == nil {
			r.log.Debug("template events", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (r *Recorder) compareTemplates(ctx context.Context, fence clientv3.Cmp) error {
	lctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	tmpls, err := r.cfg.Templates(lctx)
	if err != nil {
		return fmt.Errorf("list templates: %w", err)
	}
	seen, found, err := r.st.SeenTemplates(ctx)
	if err != nil {
		return err
	}
	now := map[string]store.SeenTemplate{}
	names := map[string]string{}
	for _, t := range tmpls {
		names[t.ID] = t.Name
		// Every template's tags are read: a deleted tag changes neither
		// the template's last push nor, always, its size.
		d, err := r.cfg.Template(lctx, t.ID)
		if err != nil {
			return fmt.Errorf("read template %s: %w", t.ID, err)
		}
		st := store.SeenTemplate{LastPush: t.LastPush, Size: t.Size, Tags: []string{}}
		for _, v := range d.Versions {
			st.Tags = append(st.Tags, v.Tag)
		}
		slices.Sort(st.Tags)
		now[t.ID] = st
	}
	var evs []apiv1.Event
	at := time.Now().UTC()
	for id, t := range now {
		for _, tag := range t.Tags {
			if !slices.Contains(seen[id].Tags, tag) {
				evs = append(evs, apiv1.Event{Time: at, Type: apiv1.EventTemplatePushed, TemplateID: id, Tag: tag,
					Message: fmt.Sprintf("%s:%s pushed", names[id], tag)})
			}
		}
	}
	for id, t := range seen {
		for _, tag := range t.Tags {
			if !slices.Contains(now[id].Tags, tag) {
				msg := "tag " + tag + " deleted"
				if _, ok := now[id]; !ok {
					msg = "template deleted (tag " + tag + ")"
				}
				evs = append(evs, apiv1.Event{Time: at, Type: apiv1.EventTemplateDeleted, TemplateID: id, Tag: tag, Message: msg})
			}
		}
	}
	if found && len(evs) == 0 && len(now) == len(seen) {
		return nil
	}
	if !found {
		evs = nil // the first look is the baseline
	}
	slices.SortFunc(evs, func(a, b apiv1.Event) int {
		return strings.Compare(a.Type+a.TemplateID+a.Tag, b.Type+b.TemplateID+b.Tag)
	})
	return r.st.EnqueueTemplateEvents(ctx, fence, now, evs)
}
