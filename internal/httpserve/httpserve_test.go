package httpserve

import (
	"bytes"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"
)

func TestWarnIfOpen(t *testing.T) {
	for _, tc := range []struct {
		ip    string
		auth  bool
		warns bool
	}{
		{"127.0.0.1", false, false}, {"::1", false, false},
		{"0.0.0.0", false, true}, {"10.1.2.3", false, true}, {"::", false, true},
		{"0.0.0.0", true, false},
	} {
		var buf bytes.Buffer
		log := slog.New(slog.NewTextHandler(&buf, nil))
		WarnIfOpen(log, "the controller", &net.TCPAddr{IP: net.ParseIP(tc.ip), Port: 8090}, tc.auth, "anyone can start VMs")
		if got := strings.Contains(buf.String(), "without authentication"); got != tc.warns {
			t.Errorf("%s auth=%v: warned=%v, want %v (%s)", tc.ip, tc.auth, got, tc.warns, buf.String())
		}
	}
}

func TestPerAddressLimits(t *testing.T) {
	now := time.Unix(1000, 0)
	l := NewPerAddress(2, 4)
	l.now = func() time.Time { return now }
	for i := range 4 {
		if ok, _ := l.Allow("10.0.0.1"); !ok {
			t.Fatalf("request %d of the burst refused", i)
		}
	}
	ok, wait := l.Allow("10.0.0.1")
	if ok || wait != 500*time.Millisecond {
		t.Fatalf("past the burst: %v, wait %v", ok, wait)
	}
	if ok, _ := l.Allow("10.0.0.2"); !ok {
		t.Fatal("another address was limited")
	}
	now = now.Add(500 * time.Millisecond)
	if ok, _ := l.Allow("10.0.0.1"); !ok {
		t.Fatal("no token after the wait")
	}
	now = now.Add(2 * time.Minute)
	l.Allow("10.0.0.3")
	if _, kept := l.buckets["10.0.0.1"]; kept {
		t.Error("an idle full bucket was kept")
	}
}
