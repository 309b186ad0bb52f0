package scheduler

import (
	"testing"
	"time"
)

// TestNewDefaults: zero settings take the defaults, set ones stay.
func TestNewDefaults(t *testing.T) {
	s := New(nil, Config{}, nil)
	if s.cfg.SessionTTL != 5 || s.cfg.Retention != time.Minute || s.cfg.FenceMargin != DefaultFenceMargin {
		t.Fatalf("defaults %+v", s.cfg)
	}
	set := Config{SessionTTL: 1, Retention: time.Second, FenceMargin: time.Millisecond}
	if s := New(nil, set, nil); s.cfg.SessionTTL != 1 || s.cfg.Retention != time.Second || s.cfg.FenceMargin != time.Millisecond {
		t.Fatalf("set %+v, got %+v", set, s.cfg)
	}
}
