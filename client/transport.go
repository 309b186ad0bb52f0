package client

import (
	"net"
	"net/http"
	"time"
)

// newTransport is the HTTP transport of every Corral client: connecting and
// the TLS handshake are bounded, idle connections expire. Whole requests are
// bounded by their context (retry.Policy.PerAttempt, or the call's own
// deadline for long polls).
func newTransport(perHost int) *http.Transport {
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   perHost,
		ForceAttemptHTTP2:     true,
	}
}
