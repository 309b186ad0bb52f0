package httpserve

import (
	"bytes"
	"log/slog"
	"net"
	"strings"
	"testing"
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
