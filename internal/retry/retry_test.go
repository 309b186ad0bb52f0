package retry

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestDoStopsOnSuccessPermanentAndAttempts(t *testing.T) {
	p := Policy{Attempts: 4, Initial: time.Microsecond, Max: time.Microsecond}
	ctx := context.Background()
	n := 0
	if err := p.Do(ctx, func(context.Context) error { n++; return nil }); err != nil || n != 1 {
		t.Fatalf("success: %v after %d calls", err, n)
	}
	n = 0
	boom := errors.New("boom")
	if err := p.Do(ctx, func(context.Context) error { n++; return Permanent(boom) }); err != boom || n != 1 {
		t.Fatalf("permanent: %v after %d calls, want boom after 1", err, n)
	}
	n = 0
	if err := p.Do(ctx, func(context.Context) error { n++; return boom }); !errors.Is(err, boom) || n != 4 {
		t.Fatalf("transient: %v after %d calls, want boom after 4", err, n)
	}
}

func TestDoBoundsEachAttemptAndHonoursTheCaller(t *testing.T) {
	p := Policy{Attempts: 2, Initial: time.Microsecond, PerAttempt: 10 * time.Millisecond}
	n := 0
	err := p.Do(context.Background(), func(ctx context.Context) error {
		n++
		<-ctx.Done() // a hung call
		return ctx.Err()
	})
	if !errors.Is(err, context.DeadlineExceeded) || n != 2 {
		t.Fatalf("hung attempts: %v after %d calls", err, n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n = 0
	err = Forever.Do(ctx, func(context.Context) error { n++; cancel(); return errors.New("down") })
	if err == nil || n != 1 {
		t.Fatalf("cancelled caller: %v after %d calls, want an error after 1", err, n)
	}
}

func TestDelayIsCappedAndGrows(t *testing.T) {
	p := Policy{Initial: 100 * time.Millisecond, Max: time.Second}
	for a := range 20 {
		d := p.Delay(a)
		if d > time.Second || d < 50*time.Millisecond {
			t.Fatalf("attempt %d: delay %v out of [50ms, 1s]", a, d)
		}
	}
	if p.Delay(10) < 500*time.Millisecond {
		t.Fatal("late delays should approach Max")
	}
}
