// Package httpserve holds what every Corral HTTP server shares: timeouts
// that bound how long one client can hold a connection (slowloris), a
// header size bound, and the warning printed when a server that lets
// anyone in listens beyond this machine.
package httpserve

import (
	"cmp"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Timeouts bound a connection's phases; zero fields take the defaults.
type Timeouts struct {
	// ReadHeader bounds the request line and headers (default 10 s).
	ReadHeader time.Duration
	// Read bounds the whole request, body included (default 1 min: API
	// bodies are small; the registry's transfers are split into chunks and
	// it sets its own).
	Read time.Duration
	// Idle bounds a kept-alive connection between requests (default 2 min).
	Idle time.Duration
}

// MaxHeaderBytes bounds a request's headers.
const MaxHeaderBytes = 64 << 10

// Server returns an http.Server for h with the timeouts applied. There is no
// write timeout: long polls answer after up to their poll interval, and
// handlers bound their own work with the request's context.
func (t Timeouts) Server(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: cmp.Or(t.ReadHeader, 10*time.Second),
		ReadTimeout:       cmp.Or(t.Read, time.Minute),
		IdleTimeout:       cmp.Or(t.Idle, 2*time.Minute),
		MaxHeaderBytes:    MaxHeaderBytes,
	}
}

// Exposed reports whether addr is reachable from other machines (not a
// loopback address).
func Exposed(addr net.Addr) bool {
	tcp, ok := addr.(*net.TCPAddr)
	return !ok || !tcp.IP.IsLoopback()
}

// WarnIfOpen logs a warning at start when a server that does not check
// credentials listens beyond this machine; risk says what anyone can do.
func WarnIfOpen(log *slog.Logger, server string, addr net.Addr, checksCredentials bool, risk string) {
	if checksCredentials || !Exposed(addr) {
		return
	}
	log.Warn(server+" is reachable from other machines without authentication: "+risk,
		"listen", addr.String())
}
