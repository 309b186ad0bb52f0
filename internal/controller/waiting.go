package controller

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// DefaultMaxWaiting bounds the instances not yet running in a cloud.
const DefaultMaxWaiting = 20000

// DefaultMaxInstanceBytes bounds what the cloud's unfinished instances
// keep in etcd (records, metadata, startup scripts): a quarter of etcd's
// default 2 GiB quota, so no sequence of valid starts fills it.
const DefaultMaxInstanceBytes = 512 << 20

// instanceRecordBytes is what one instance costs in etcd besides its
// metadata and script (its record, assignment and console).
const instanceRecordBytes = 4 << 10

// BytesLimitError is a start refused because the cloud's unfinished
// instances would keep too much in etcd.
type BytesLimitError struct {
	Stored, Asked, Limit int64
}

func (e *BytesLimitError) Error() string {
	return fmt.Sprintf("the cloud's unfinished instances keep %d bytes of records, metadata and startup scripts and this start "+
		"would add %d, the limit is %d (--max-instance-bytes); try again once some have finished, or use a smaller script, "+
		"metadata or count", e.Stored, e.Asked, e.Limit)
}

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
	// bytes is what unfinished instances keep in etcd (estimated:
	// instanceRecordBytes, metadata, each script once).
	bytes int64
}

// reserveWaiting admits n more waiting instances for caller, or says which
// limit they would pass. release undoes it when the start fails.
func (s *Service) reserveWaiting(ctx context.Context, caller string, n int, bytes int64) (release func(), err error) {
	maxAll, maxCaller, maxBytes := s.cfg.MaxWaiting, s.cfg.MaxWaitingPerCaller, int64(s.cfg.MaxInstanceBytes)
	if maxAll <= 0 && maxCaller <= 0 && maxBytes <= 0 {
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
		w.total, w.by, w.bytes, w.at = 0, map[string]int{}, 0, time.Now()
		scripts := map[string]bool{}
		for _, r := range recs {
			if r.NeverStarted() {
				w.total++
				w.by[r.Caller]++
			}
			if !r.Finished() {
				w.bytes += instanceRecordBytes + int64(len(r.Metadata))
				if r.Spec.ScriptRef != "" && !scripts[r.Spec.ScriptRef] {
					scripts[r.Spec.ScriptRef] = true
					w.bytes += int64(r.ScriptBytes)
				}
			}
		}
	}
	switch {
	case maxAll > 0 && w.total+n > maxAll:
		return nil, &LimitError{Scope: "the cloud", Waiting: w.total, Asked: n, Limit: maxAll, Flag: "--max-waiting-instances"}
	case maxCaller > 0 && w.by[caller]+n > maxCaller:
		return nil, &LimitError{Scope: caller, Waiting: w.by[caller], Asked: n, Limit: maxCaller, Flag: "--max-waiting-instances-per-caller"}
	case maxBytes > 0 && w.bytes+bytes > maxBytes:
		return nil, &BytesLimitError{Stored: w.bytes, Asked: bytes, Limit: maxBytes}
	}
	w.total += n
	w.by[caller] += n
	w.bytes += bytes
	return func() {
		w.mu.Lock()
		w.total -= n
		w.by[caller] -= n
		w.bytes -= bytes
		w.mu.Unlock()
	}, nil
}
