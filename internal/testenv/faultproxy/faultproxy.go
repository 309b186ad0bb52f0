// Package faultproxy is a fault-injecting HTTP reverse proxy for tests: put it
// between a client and a real Corral server and make chosen routes fail, hang
// or slow down, then heal them, without touching either side's code.
package faultproxy

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// Fault is what the proxy does to a matching request.
type Fault struct {
	// Status, when non-zero, answers at once with this code; the request
	// never reaches the server.
	Status int
	// Hang holds the request until the client goes away or Heal is called;
	// then it is answered 503 (never forwarded).
	Hang bool
	// Delay forwards the request after this long (a slow server).
	Delay time.Duration
	// Cut is a dead link: new requests hang as with Hang, and so do the
	// answers of requests forwarded before the cut (a long poll in
	// flight): nothing more of them reaches the client, as over a link
	// whose packets are dropped. Heal releases them as a dropped
	// connection.
	Cut bool
}

// Proxy forwards to a target server, applying the faults set per path prefix.
type Proxy struct {
	URL string

	mu     sync.Mutex
	rules  map[string]Fault // path prefix → fault
	healed chan struct{}    // closed by Heal, releasing hung requests
	hits   map[string]int   // path prefix → requests that met its fault
}

// New starts a proxy on loopback in front of target; it closes with the test.
func New(t testing.TB, target string) *Proxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatalf("faultproxy: target %q: %v", target, err)
	}
	p := &Proxy{rules: map[string]Fault{}, hits: map[string]int{}, healed: make(chan struct{})}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ErrorLog = nil
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, healed, ok := p.match(r.URL.Path)
		if ok {
			switch {
			case f.Status != 0:
				http.Error(w, "faultproxy: injected failure", f.Status)
				return
			case f.Hang || f.Cut:
				select {
				case <-r.Context().Done():
				case <-healed:
				}
				http.Error(w, "faultproxy: hung request released", http.StatusServiceUnavailable)
				return
			case f.Delay > 0:
				t := time.NewTimer(f.Delay)
				select {
				case <-r.Context().Done():
					t.Stop()
					return
				case <-t.C:
				}
			}
		}
		rp.ServeHTTP(&cutWriter{ResponseWriter: w, p: p, r: r}, r)
	}))
	t.Cleanup(func() {
		p.Heal()
		srv.Close()
	})
	p.URL = srv.URL
	return p
}

func (p *Proxy) match(path string) (Fault, chan struct{}, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	best := ""
	for prefix := range p.rules {
		if strings.HasPrefix(path, prefix) && len(prefix) > len(best) {
			best = prefix
		}
	}
	f, ok := p.rules[best]
	if ok {
		p.hits[best]++
	}
	return f, p.healed, ok
}

// cutWriter delivers an answer only while no Cut fault covers its request.
type cutWriter struct {
	http.ResponseWriter
	p *Proxy
	r *http.Request
}

func (w *cutWriter) hold() {
	w.p.mu.Lock()
	cut, healed := false, w.p.healed
	for prefix, f := range w.p.rules {
		if f.Cut && strings.HasPrefix(w.r.URL.Path, prefix) {
			cut = true
		}
	}
	w.p.mu.Unlock()
	if !cut {
		return
	}
	select {
	case <-w.r.Context().Done():
	case <-healed:
	}
	panic(http.ErrAbortHandler) // the connection drops; the client sees an error
}

func (w *cutWriter) WriteHeader(code int) { w.hold(); w.ResponseWriter.WriteHeader(code) }

func (w *cutWriter) Write(b []byte) (int, error) { w.hold(); return w.ResponseWriter.Write(b) }

func (w *cutWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Set applies f to every request whose path starts with prefix (the longest
// matching prefix wins).
func (p *Proxy) Set(prefix string, f Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rules[prefix] = f
}

// Hits is how many requests met the fault set for prefix.
func (p *Proxy) Hits(prefix string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.hits[prefix]
}

// Heal removes every fault and answers the requests that hang.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	clear(p.rules)
	select {
	case <-p.healed:
	default:
		close(p.healed)
	}
	p.healed = make(chan struct{})
}
