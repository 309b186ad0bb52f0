package node

import (
	"testing"
	"time"
)

func TestProgressPace(t *testing.T) {
	var p progressPace
	start := time.Now()
	sent := 0
	// A 10-minute pull reporting every 100 ms, progressing evenly.
	for i := 0; i <= 6000; i++ {
		if p.due(float64(i)/6000, start.Add(time.Duration(i)*100*time.Millisecond)) {
			sent++
		}
	}
	if sent < 20 || sent > 90 {
		t.Fatalf("%d progress reports for a 10-minute pull, want 20..90", sent)
	}
	if !p.due(1, start) {
		t.Fatal("completion must always be reported")
	}
	// A stalled pull still reports every 10 s.
	var q progressPace
	q.due(0.5, start)
	if q.due(0.5, start.Add(9*time.Second)) || !q.due(0.5, start.Add(11*time.Second)) {
		t.Fatal("a stalled pull must report about every 10 s")
	}
}
