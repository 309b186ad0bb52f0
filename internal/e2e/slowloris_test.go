package e2e

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/controller/daemon"
	"github.com/corral-build/corral/internal/httpserve"
	regdaemon "github.com/corral-build/corral/internal/registry/daemon"
	"github.com/corral-build/corral/internal/testenv"
)

// trickle sends prefix, then one byte every 100 ms, and reports whether the
// server closed the connection within limit (a slowloris client is held
// forever by a server without read timeouts).
func trickle(t *testing.T, addr, prefix string, limit time.Duration) bool {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	closed := make(chan struct{})
	go func() {
		io.Copy(io.Discard, c) // ends when the server closes (or answers 408 and closes)
		close(closed)
	}()
	if _, err := io.WriteString(c, prefix); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(limit)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-closed:
			return true
		case <-deadline:
			return false
		case <-tick.C:
			c.Write([]byte("x")) // errors once the server hung up; closed fires then
		}
	}
}

// TestSlowClientsAreCut: every server cuts a client that trickles its
// headers or its body, after the read-header and read timeouts.
func TestSlowClientsAreCut(t *testing.T) {
	short := httpserve.Timeouts{ReadHeader: 500 * time.Millisecond, Read: time.Second, Idle: time.Second}
	e := testenv.StartEtcd(t)
	ctl, err := daemon.Start(context.Background(), daemon.Config{ListenAddr: "127.0.0.1:0", EtcdEndpoints: []string{e.ClientURL},
		JoinToken: "t", EtcdLogLevel: "off", Timeouts: short, TemplatesFile: t.TempDir() + "/templates.json", Log: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	reg, err := regdaemon.Start(regdaemon.Config{ListenAddr: "127.0.0.1:0", DataDir: t.TempDir(), Timeouts: short, Log: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	for _, srv := range []struct{ name, url, path string }{
		{"controller", ctl.URL, "/api/v1/vm"}, {"registry", reg.URL, "/registry/corral/v1/uploads"},
	} {
		addr := strings.TrimPrefix(srv.url, "http://")
		if !trickle(t, addr, "POST "+srv.path+" HTTP/1.1\r\nHost: x\r\nX-Slow: ", 10*time.Second) {
			t.Errorf("%s held a client trickling its headers for 10 s", srv.name)
		}
		if !trickle(t, addr, "POST "+srv.path+" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n", 10*time.Second) {
			t.Errorf("%s held a client trickling its body for 10 s", srv.name)
		}
	}
}
