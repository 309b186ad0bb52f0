package scheduler

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/store"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Config tunes the leader loop.
type Config struct {
	// ID names this controller in the election (host:port or similar).
	ID string
	// SessionTTL bounds how long a crashed leader blocks the others (seconds).
	SessionTTL int
	// Retention is how long Terminated instances are kept before deletion.
	Retention time.Duration
	// FenceMargin is how long after a node's lease is seen gone its work
	// stays bound to it: a node stops its VMs when its lease may have
	// expired (it self-fences), and this leaves that stop time to finish
	// before the work is re-placed or failed, so no instance runs on two
	// nodes at once. 0: DefaultFenceMargin.
	FenceMargin time.Duration
	// Known checks templates against the registry; nil accepts all.
	Known TemplateKnown
	// OnPass, when set, observes each pass's duration (metrics).
	OnPass func(time.Duration)
	// OnPlaced, when set, observes how long a placed instance waited.
	OnPlaced func(time.Duration)
	// WhileLeading, when set, runs for as long as this controller leads:
	// cloud-wide chores that one controller should do (defragmentation, the
	// event log). Writes fenced on fence land only while it leads.
	WhileLeading func(ctx context.Context, fence clientv3.Cmp)
}

// Scheduler runs placement while this controller holds the leadership.
type Scheduler struct {
	st  *store.Store
	cfg Config
	log *slog.Logger
	// abandoned: the process is "crashing" (tests' crash-like kill): leave
	// the election lease to expire, never resign or revoke it.
	abandoned atomic.Bool

	lostMu sync.Mutex
	// lostSince: when a pass first saw a node without its lease (or its
	// record) while instances still held its slots.
	lostSince map[string]time.Time
}

// DefaultFenceMargin is Config.FenceMargin's default.
const DefaultFenceMargin = 15 * time.Second

// Abandon makes the scheduler stop like a crashed process would: it keeps
// its election lease alive no longer, and neither resigns nor revokes it,
// so the others take over only when the lease expires.
func (s *Scheduler) Abandon() { s.abandoned.Store(true) }

// New returns a Scheduler; call Run to take part in the election.
func New(st *store.Store, cfg Config, log *slog.Logger) *Scheduler {
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 5
	}
	if cfg.Retention <= 0 {
		cfg.Retention = time.Minute
	}
	if cfg.FenceMargin <= 0 {
		cfg.FenceMargin = DefaultFenceMargin
	}
	return &Scheduler{st: st, cfg: cfg, log: log, lostSince: map[string]time.Time{}}
}

// Run campaigns for leadership and schedules while leading, until ctx ends.
// Two controllers on one etcd never both commit: each placement is fenced on
// the leader key's revision.
func (s *Scheduler) Run(ctx context.Context) error {
	for ctx.Err() == nil && !s.abandoned.Load() {
		if err := s.campaignAndLead(ctx); err != nil && ctx.Err() == nil && !s.abandoned.Load() {
			s.log.Warn("scheduler leadership lost", "err", err)
			time.Sleep(time.Second)
		}
	}
	return nil
}

func (s *Scheduler) campaignAndLead(ctx context.Context) error {
	session, err := concurrency.NewSession(s.st.Client(), concurrency.WithTTL(s.cfg.SessionTTL), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("election session: %w", err)
	}
	defer func() {
		if s.abandoned.Load() {
			session.Orphan()
		} else {
			session.Close()
		}
	}()
	election := s.st.Election(session, "scheduler")
	if err := election.Campaign(ctx, s.cfg.ID); err != nil {
		return fmt.Errorf("campaign: %w", err)
	}
	s.log.Info("scheduler leader elected", "id", s.cfg.ID)
	ectx, ecancel := context.WithTimeout(ctx, 5*time.Second)
	err = s.st.EnqueueEvent(ectx, apiv1.Event{Time: time.Now().UTC(), Type: apiv1.EventSchedulerLeader,
		Message: "scheduler leader is " + s.cfg.ID})
	ecancel()
	if err != nil {
		s.log.Warn("record leader event", "err", err)
	}
	leadCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-session.Done():
			cancel()
		case <-leadCtx.Done():
		}
	}()
	fence := clientv3.Compare(clientv3.CreateRevision(election.Key()), "=", election.Rev())
	if s.cfg.WhileLeading != nil {
		go s.cfg.WhileLeading(leadCtx, fence)
	}
	s.lead(leadCtx, fence)
	if ctx.Err() != nil && !s.abandoned.Load() {
		// Graceful stop: hand leadership over at once instead of after the TTL.
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer rcancel()
		_ = election.Resign(rctx)
		return nil
	}
	return fmt.Errorf("session ended")
}

// lead runs passes whenever anything under the prefix changes (debounced),
// and at least every few seconds so retention and lost nodes are handled.
func (s *Scheduler) lead(ctx context.Context, fence clientv3.Cmp) {
	watch := s.st.WatchAll(clientv3.WithRequireLeader(ctx), clientv3.WithFilterDelete())
	tick := time.NewTicker(min(s.cfg.Retention/2, 3*time.Second))
	defer tick.Stop()
	lastPurge := time.Time{}
	for {
		if err := s.Pass(ctx, fence); err != nil && ctx.Err() == nil {
			s.log.Warn("scheduling pass failed", "err", err)
		}
		if time.Since(lastPurge) > min(s.cfg.Retention/2, 10*time.Second) {
			if n, err := s.st.PurgeFinished(ctx, s.cfg.Retention); err != nil && ctx.Err() == nil {
				s.log.Warn("purge finished instances", "err", err)
			} else if n > 0 {
				s.log.Debug("purged finished instances", "count", n)
			}
			if _, err := s.st.PurgeScripts(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("purge startup scripts", "err", err)
			}
			if _, err := s.st.PurgeFinishedImages(ctx, s.cfg.Retention); err != nil && ctx.Err() == nil {
				s.log.Warn("purge save-image requests", "err", err)
			}
			if _, err := s.st.PurgeFinishedDistributions(ctx, s.cfg.Retention); err != nil && ctx.Err() == nil {
				s.log.Warn("purge distribute requests", "err", err)
			}
			lastPurge = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case resp, ok := <-watch:
			if !ok {
				return
			}
			if s.onlyEventLog(resp) {
				continue // the event log's writes change no placement
			}
			// Debounce a burst of writes into one pass.
			timer := time.NewTimer(50 * time.Millisecond)
		drain:
			for {
				select {
				case <-watch:
				case <-timer.C:
					break drain
				case <-ctx.Done():
					timer.Stop()
					return
				}
			}
		}
	}
}

// Pass takes one snapshot, fails instances of lost nodes, and commits the plan.
func (s *Scheduler) Pass(ctx context.Context, fence clientv3.Cmp) error {
	start := time.Now()
	snap, err := s.st.SchedulingSnapshot(ctx)
	if err != nil {
		return err
	}
	if err := s.failLostNodes(ctx, snap); err != nil {
		return err
	}
	lastCommit := map[string]int64{}
	nodes := map[string]*store.NodeEntry{}
	for i := range snap.Nodes {
		nodes[snap.Nodes[i].Report.NodeID] = &snap.Nodes[i]
	}
	// What each node holds, with this pass's placements counted as they
	// commit (for re-checks of a node whose record changed meanwhile).
	used := snap.Usage()
	// Placements are committed in batches, in plan (priority) order: one
	// transaction for many, each still fenced and re-checked.
	var batch []store.Placement
	var batchIn []store.InstanceEntry
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		defer func() { batch, batchIn = batch[:0], batchIn[:0] }()
		// Nodes' agents rewrite their records as they report: commit at
		// each node's newest revision where the node as it is now still
		// takes the instance, so one report does not fail the batch.
		inBatch := map[string]store.NodeUsage{} // the batch's own, before p
		for i := range batch {
			p := &batch[i]
			u := used[p.NodeID]
			b := inBatch[p.NodeID]
			u = store.NodeUsage{Slots: u.Slots + b.Slots, VCPU: u.VCPU + b.VCPU, VRAM: u.VRAM + b.VRAM}
			if n, ok := s.st.ViewNode(p.NodeID); ok && n.ModRev > p.NodeRev && !n.Drain && fits(n.NodeRecord, u, p.Instance.Spec) {
				p.NodeRev = n.ModRev
			}
			inBatch[p.NodeID] = b.Add(p.Instance.Spec)
		}
		rev, err := s.st.PlaceBatch(ctx, batch, fence)
		if err != nil {
			return err
		}
		if rev != 0 {
			for i, p := range batch {
				lastCommit[p.NodeID] = rev
				used[p.NodeID] = used[p.NodeID].Add(p.Instance.Spec)
				s.placed(batchIn[i], nodes[p.NodeID])
			}
			return nil
		}
		// One of them changed under us: place them one by one, so the
		// others still go now.
		for i, p := range batch {
			p.AssignedSince = max(p.AssignedSince, lastCommit[p.NodeID])
			rev, err := s.st.Place(ctx, p, fence)
			if err != nil {
				return err
			}
			if rev == 0 {
				// Most often the node's own report changed its record (not
				// its capacity): when the node as it is now still takes
				// the instance, try once more at its new revision.
				if n, nrev, err := s.st.GetNodeRev(ctx, p.NodeID); err == nil && nrev != p.NodeRev && !n.Drain &&
					fits(n, used[p.NodeID], p.Instance.Spec) {
					p.NodeRev = nrev
					if rev, err = s.st.Place(ctx, p, fence); err != nil {
						return err
					}
				}
			}
			if rev == 0 {
				// The watch brings a fresh pass.
				s.log.Debug("placement conflict, replanning", "instance", p.Instance.InstanceID, "node", p.NodeID)
				continue
			}
			lastCommit[p.NodeID] = rev
			used[p.NodeID] = used[p.NodeID].Add(p.Instance.Spec)
			s.placed(batchIn[i], nodes[p.NodeID])
		}
		return nil
	}
	var waits []store.Waiting
	for _, d := range Plan(snap, s.cfg.Known) {
		in := d.Instance
		if d.NodeID == "" {
			if in.Message == d.Reason && !d.Fail {
				continue // only write when the reason changes
			}
			in.Message, in.TS = d.Reason, time.Now().UTC()
			if d.Fail {
				in.State = apiv1.StateError
			}
			waits = append(waits, store.Waiting{Instance: in.InstanceRecord, Rev: in.ModRev})
			continue
		}
		node := nodes[d.NodeID]
		rec := in.InstanceRecord
		rec.NodeID, rec.SlotHeld, rec.Message, rec.TS = d.NodeID, true, "", time.Now().UTC()
		batch = append(batch, store.Placement{
			Instance: rec, InstanceRev: in.ModRev, NodeID: d.NodeID, NodeRev: node.ModRev,
			AssignedSince: max(snap.Rev, lastCommit[d.NodeID]),
		})
		batchIn = append(batchIn, in)
		if len(batch) == store.MaxPlacementBatch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	if err := s.st.SetWaitingBatch(ctx, waits, fence); err != nil {
		return err
	}
	if s.cfg.OnPass != nil {
		s.cfg.OnPass(time.Since(start))
	}
	return nil
}

// placed notes a committed placement.
func (s *Scheduler) placed(in store.InstanceEntry, node *store.NodeEntry) {
	if s.cfg.OnPlaced != nil {
		s.cfg.OnPlaced(time.Since(in.CrTime))
	}
	name := in.NodeID
	if node != nil {
		name = node.Report.NodeName
	}
	s.log.Info("instance placed", "instance", in.InstanceID, "node", name, "priority", in.Priority)
}

// failLostNodes releases the slots of instances whose node's lease expired or
// which was disjoined, so capacity is not held by a dead machine, once the
// node has certainly stopped them: FenceMargin after a pass first saw the
// node gone. Until then the instances stay bound to it, never re-placed.
func (s *Scheduler) failLostNodes(ctx context.Context, snap store.Snapshot) error {
	live := map[string]string{} // alive node id -> name
	names := map[string]string{}
	for _, n := range snap.Nodes {
		names[n.Report.NodeID] = n.Report.NodeName
		if n.Alive {
			live[n.Report.NodeID] = n.Report.NodeName
		}
	}
	now := time.Now()
	s.lostMu.Lock()
	lost := map[string]bool{}
	for _, in := range snap.Instances {
		if _, ok := live[in.NodeID]; in.SlotHeld && !ok {
			lost[in.NodeID] = true
		}
	}
	for id := range s.lostSince {
		if !lost[id] {
			delete(s.lostSince, id) // back, or nothing of it left to release
		}
	}
	fenced := map[string]bool{}
	for id := range lost {
		since, seen := s.lostSince[id]
		if !seen {
			s.lostSince[id] = now
			s.log.Warn("node lost its lease; its instances are released once it has certainly stopped them",
				"node", cmp.Or(names[id], id), "margin", s.cfg.FenceMargin)
			continue
		}
		fenced[id] = now.Sub(since) >= s.cfg.FenceMargin
	}
	s.lostMu.Unlock()
	for _, in := range snap.Instances {
		if !in.SlotHeld || !fenced[in.NodeID] {
			continue
		}
		reason := fmt.Sprintf("node %s went offline (lease expired)", cmp.Or(names[in.NodeID], in.NodeID))
		if _, known := names[in.NodeID]; !known {
			reason = fmt.Sprintf("node %s was removed from the cloud", in.NodeID)
		}
		_, err := s.st.UpdateInstance(ctx, in.InstanceID, func(r *store.InstanceRecord) (store.InstanceUpdate, error) {
			if !r.SlotHeld || r.NodeID != in.NodeID {
				return store.InstanceUpdate{Skip: true}, nil
			}
			now := time.Now().UTC()
			r.TS, r.SlotHeld = now, false
			switch {
			case r.State == apiv1.StateTerminating:
				r.State, r.FinishedAt = apiv1.StateTerminated, now
			case r.NeverStarted():
				// Its VM never booted there: another node can run it.
				r.Requeue(reason + " before starting it")
				return store.InstanceUpdate{Unassign: true}, nil
			default:
				r.State, r.Message = apiv1.StateError, reason
			}
			if r.VMInfo != nil {
				r.VMInfo.Status, r.VMInfo.StopDate = "stopped", now
			}
			return store.InstanceUpdate{Unassign: true}, nil
		})
		if err != nil && err != store.ErrNotFound {
			return err
		}
		s.log.Warn("instance lost with its node", "instance", in.InstanceID, "node", in.NodeID)
	}
	return nil
}

// onlyEventLog reports whether a watch response holds nothing but the event
// log's own writes.
func (s *Scheduler) onlyEventLog(resp clientv3.WatchResponse) bool {
	if len(resp.Events) == 0 {
		return false
	}
	for _, e := range resp.Events {
		if !s.st.IsEventKey(string(e.Kv.Key)) {
			return false
		}
	}
	return true
}
