package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/store"
)

// TestEventLogTrim: the index trims by count and by age, oldest first, and
// an event written again (a recorder resuming from an older checkpoint) is
// indexed once.
func TestEventLogTrim(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	fence := always(t, st)
	now := time.Now().UTC()
	ev := func(rev int64, age time.Duration) apiv1.Event {
		return apiv1.Event{ID: apiv1.EventID{Rev: rev}.String(), Type: apiv1.EventAuthFailed, Time: now.Add(-age), Message: fmt.Sprint(rev)}
	}
	// 10 events two hours old, then 20 from now.
	var first []apiv1.Event
	for i := range 10 {
		first = append(first, ev(int64(100+i), 2*time.Hour))
	}
	if err := st.AppendEvents(ctx, fence, first, nil, 109); err != nil {
		t.Fatal(err)
	}
	l, err := st.LoadEventLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var second []apiv1.Event
	for i := range 20 {
		second = append(second, ev(int64(200+i), 0))
	}
	if err := st.AppendEvents(ctx, fence, second, nil, 219); err != nil {
		t.Fatal(err)
	}
	l.Appended(second)
	l.Appended(second[:5]) // written again
	l.Appended(first[3:4])
	if l.Len() != 30 {
		t.Fatalf("index holds %d, want 30", l.Len())
	}
	stored := func() []string {
		evs, err := st.ListEvents(ctx, store.EventQuery{Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range evs {
			out = append(out, e.Message)
		}
		return out
	}
	// By age: the ten old ones go.
	if n, err := l.Trim(ctx, fence, 100, time.Hour); err != nil || n != 10 {
		t.Fatalf("trim by age deleted %d (%v), want 10", n, err)
	}
	if got := stored(); len(got) != 20 || got[0] != "200" {
		t.Fatalf("after the age trim: %v", got)
	}
	// By count: the oldest beyond 15.
	if n, err := l.Trim(ctx, fence, 15, time.Hour); err != nil || n != 5 {
		t.Fatalf("trim by count deleted %d (%v), want 5", n, err)
	}
	if got := stored(); len(got) != 15 || got[0] != "205" || got[14] != "219" || l.Len() != 15 {
		t.Fatalf("after the count trim: %v (index %d)", got, l.Len())
	}
	if n, err := l.Trim(ctx, fence, 15, time.Hour); err != nil || n != 0 {
		t.Fatalf("a trim within bounds deleted %d (%v)", n, err)
	}
}
