package controller

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// DefaultMaxWaiting bounds the instances not yet running in a cloud.
const DefaultMaxWaiting = 20000

// LimitError is a start refused because too many instances are waiting.
type LimitError struct {
	Scope   string // "the cloud" or "caller key:jenkins"
	Waiting int
	Asked   int
	Limit   int
	Flag    string
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("too many waiting instances: %d are waiting for %s and %d more were asked, the limit is %d (%s); try again once some have started",
		e.Waiting, e.Scope, e.Asked, e.Limit, e.Flag)
}

type callerKey struct{}

// WithCaller records who is calling, for per-caller limits.
func WithCaller(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, callerKey{}, id.String())
}

func callerOf(ctx context.Context) string {
	if c, ok := ctx.Value(callerKey{}).(string); ok {
		return c
	}
	return "root"
}

// waitingCount is the instances not yet running (Scheduling or Pulling),
// in all and per caller: counted from the store at most once a second and
// kept up to date between counts with what this controller admits, so one
// controller enforces the limits exactly and several within a second's
// worth of starts.
type waitingCount struct {
	mu    sync.Mutex
	at    time.Time
	total int
	by    map[string]int
}

// reserveWaiting admits n more waiting instances for caller, or says which
// limit they would pass. release undoes it when the start fails.
func (s *Service) reserveWaiting(ctx context.Context, caller string, n int) (release func(), err error) {
	maxAll, maxCaller := s.cfg.MaxWaiting, s.cfg.MaxWaitingPerCaller
	if maxAll <= 0 && maxCaller <= 0 {
		return func() {}, nil
	}
	w := &s.waiting
	w.mu.Lock()
	defer w.mu.Unlock()
	if time.Since(w.at) > time.Second {
		recs, err := s.st.ListInstances(ctx)
		if err != nil {
			return nil, fmt.Errorf("count waiting instances: %w", err)
		}
		w.total, w.by, w.at = 0, map[string]int{}, time.Now()
		for _, r := range recs {
			if r.NeverStarted() {
				w.total++
				w.by[r.Caller]++
			}
		}
	}
	switch {
	case maxAll > 0 && w.total+n > maxAll:
		return nil, &LimitError{Scope: "the cloud", Waiting: w.total, Asked: n, Limit: maxAll, Flag: "--max-waiting-instances"}
	case maxCaller > 0 && w.by[caller]+n > maxCaller:
		return nil, &LimitError{Scope: caller, Waiting: w.by[caller], Asked: n, Limit: maxCaller, Flag: "--max-waiting-instances-per-caller"}
	}
	w.total += n
	w.by[caller] += n
	return func() {
		w.mu.Lock()
		w.total -= n
		w.by[caller] -= n
		w.mu.Unlock()
	}, nil
}
