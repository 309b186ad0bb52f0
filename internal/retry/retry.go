// Package retry is Corral's one retry policy for calls that leave the
// process (controller, registry, S3, etcd-adjacent HTTP): a bounded number of
// attempts, capped exponential backoff with jitter, a deadline on every
// attempt, no retry of permanent errors, and none once the caller's context
// has ended.
package retry

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Policy says how often and how patiently to retry.
type Policy struct {
	// Attempts is the total number of tries; 0 means until ctx ends.
	Attempts int
	// Initial is the first backoff; it doubles up to Max.
	Initial, Max time.Duration
	// PerAttempt bounds each attempt (0: only the caller's context).
	PerAttempt time.Duration
}

// Default suits a request to a Corral server: 5 tries over about 3 s, each
// bounded by 30 s.
var Default = Policy{Attempts: 5, Initial: 100 * time.Millisecond, Max: 5 * time.Second, PerAttempt: 30 * time.Second}

// Forever retries until the context ends (joining, background refreshes).
var Forever = Policy{Initial: 200 * time.Millisecond, Max: 5 * time.Second, PerAttempt: 30 * time.Second}

type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent marks err as not worth another attempt (a 4xx, a bad input).
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// IsPermanent reports whether err was marked Permanent.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

// Delay is the backoff before try attempt+1 (attempt counts from 0): the
// capped exponential value, with the upper half jittered.
func (p Policy) Delay(attempt int) time.Duration {
	d := p.Initial
	for range attempt {
		d *= 2
		if p.Max > 0 && d >= p.Max {
			d = p.Max
			break
		}
	}
	if d <= 0 {
		return 0
	}
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// Do calls f until it succeeds, returns a permanent error, the attempts run
// out or ctx ends. Each call gets a context bounded by PerAttempt. The last
// error is returned, unwrapped from Permanent.
func (p Policy) Do(ctx context.Context, f func(ctx context.Context) error) error {
	var err error
	for attempt := 0; p.Attempts == 0 || attempt < p.Attempts; attempt++ {
		if attempt > 0 {
			if serr := Sleep(ctx, p.Delay(attempt-1)); serr != nil {
				return fmt.Errorf("%w (last error: %v)", serr, err)
			}
		}
		actx, cancel := ctx, context.CancelFunc(func() {})
		if p.PerAttempt > 0 {
			actx, cancel = context.WithTimeout(ctx, p.PerAttempt)
		}
		err = f(actx)
		cancel()
		if err == nil {
			return nil
		}
		var perm permanentError
		if errors.As(err, &perm) {
			return perm.err
		}
		if ctx.Err() != nil {
			return err
		}
	}
	return err
}

// Sleep waits d or until ctx ends.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
