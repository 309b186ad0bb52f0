package controller

import (
	"context"
	"fmt"
	"sync"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/events"
	"github.com/corral-build/corral/internal/store"
)

// MaxEventsPage bounds ?limit of GET /api/v1/events.
const MaxEventsPage = 1000

// Events answers GET /api/v1/events.
func (s *Service) Events(ctx context.Context, q store.EventQuery) ([]apiv1.Event, error) {
	evs, err := s.st.ListEvents(ctx, q)
	if evs == nil {
		evs = []apiv1.Event{}
	}
	return evs, err
}

// FollowEvents calls fn with the events matching q as they are recorded.
func (s *Service) FollowEvents(ctx context.Context, q store.EventQuery, fn func([]apiv1.Event) error) error {
	if q.After == nil {
		// From the newest on: show the last ones asked for, then follow.
		evs, err := s.st.ListEvents(ctx, q)
		if err != nil {
			return err
		}
		after := apiv1.EventID{}
		if len(evs) > 0 {
			if err := fn(evs); err != nil {
				return err
			}
			after, _ = apiv1.ParseEventID(evs[len(evs)-1].ID)
		} else if newest, err := s.st.ListEvents(ctx, store.EventQuery{Limit: 1}); err == nil && len(newest) > 0 {
			after, _ = apiv1.ParseEventID(newest[0].ID)
		}
		q.After = &after
	}
	return events.Follow(ctx, s.st, q, fn)
}

// record queues an event that no stored change implies; the log is a
// record, not a gate: a failure is logged, never the caller's.
func (s *Service) record(ev apiv1.Event) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	if err := s.st.EnqueueEvent(ctx, ev); err != nil {
		s.log.Warn("record event", "type", ev.Type, "err", err)
	}
}

// authFailures bounds auth.failed events: one per source a minute, and at
// most 60 a minute in all (each controller), so a password-guessing flood
// cannot flood etcd; the events say how many were folded in.
type authFailures struct {
	mu     sync.Mutex
	window time.Time
	total  int
	bySrc  map[string]int
}

// RecordAuthFailure notes a refused request from src (the client address):
// why says what failed (no credentials, bad ones, a missing permission).
func (s *Service) RecordAuthFailure(src, method, path, why string) {
	a := &s.authFail
	a.mu.Lock()
	now := time.Now()
	if now.Sub(a.window) > time.Minute {
		a.window, a.total, a.bySrc = now, 0, map[string]int{}
	}
	a.bySrc[src]++
	n := a.bySrc[src]
	first := n == 1 && a.total < 60
	if n == 1 {
		a.total++
	}
	a.mu.Unlock()
	if !first {
		return
	}
	go s.record(apiv1.Event{Type: apiv1.EventAuthFailed,
		Message: fmt.Sprintf("%s %s from %s refused: %s (further failures from there are not recorded for a minute)", method, path, src, why)})
}
