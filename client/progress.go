package client

import (
	"sync/atomic"
	"time"
)

// Progress is a snapshot of a transfer, reported to a callback.
type Progress struct {
	Phase     string // "scanning", "uploading", "downloading", "done"
	Done      int64  // bytes of file content handled in this phase
	Total     int64  // bytes of file content this phase will handle
	WireBytes int64  // bytes sent or received over the network
	Chunks    int64  // chunks transferred
	Skipped   int64  // chunks not transferred: present already, or all zeros
	Elapsed   time.Duration
}

// Rate is the content throughput in bytes/s.
func (p Progress) Rate() float64 {
	if p.Elapsed <= 0 {
		return 0
	}
	return float64(p.Done) / p.Elapsed.Seconds()
}

// ETA estimates the remaining time of the phase.
func (p Progress) ETA() time.Duration {
	rate := p.Rate()
	if rate <= 0 || p.Total <= p.Done {
		return 0
	}
	return time.Duration(float64(p.Total-p.Done) / rate * float64(time.Second))
}

// meter accumulates progress from many workers and reports it at most every
// interval (and once at the end of each phase).
type meter struct {
	fn                          func(Progress)
	phase                       string
	start                       time.Time
	total                       int64
	done, wire, chunks, skipped atomic.Int64
	last                        atomic.Int64
}

func newMeter(fn func(Progress)) *meter { return &meter{fn: fn} }

func (m *meter) begin(phase string, total int64) {
	if m.phase != "" {
		m.report(true) // the previous phase's final state
	}
	m.phase, m.total, m.start = phase, total, time.Now()
	m.done.Store(0)
	m.chunks.Store(0)
	m.skipped.Store(0)
	m.report(true)
}

func (m *meter) add(content, wire int64, transferred bool) {
	m.done.Add(content)
	m.wire.Add(wire)
	if transferred {
		m.chunks.Add(1)
	} else {
		m.skipped.Add(1)
	}
	m.report(false)
}

// addSent counts chunks that went over the wire together.
func (m *meter) addSent(content, wire, chunks int64) {
	m.done.Add(content)
	m.wire.Add(wire)
	m.chunks.Add(chunks)
	m.report(false)
}

func (m *meter) snapshot() Progress {
	return Progress{Phase: m.phase, Done: m.done.Load(), Total: m.total, WireBytes: m.wire.Load(),
		Chunks: m.chunks.Load(), Skipped: m.skipped.Load(), Elapsed: time.Since(m.start)}
}

func (m *meter) report(force bool) {
	if m.fn == nil {
		return
	}
	now := time.Now().UnixNano()
	last := m.last.Load()
	if !force && now-last < int64(200*time.Millisecond) {
		return
	}
	if m.last.CompareAndSwap(last, now) || force {
		m.fn(m.snapshot())
	}
}
