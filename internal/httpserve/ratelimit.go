package httpserve

import (
	"fmt"
	"math"
	"net"
	"net/http"
	"sync"
	"time"
)

// PerAddress limits requests per client address with a token bucket: Rate
// a second, bursts of Burst. It guards the routes anyone may call without
// credentials (logins, handshakes, joins): a flood from one address gets
// 429 with Retry-After, and callers elsewhere are not slowed.
type PerAddress struct {
	Rate  float64
	Burst float64

	mu      sync.Mutex
	buckets map[string]*bucket
	swept   time.Time
	now     func() time.Time
}

type bucket struct {
	tokens float64
	at     time.Time
}

// NewPerAddress returns a limiter of rate requests a second per address,
// bursts of burst.
func NewPerAddress(rate, burst float64) *PerAddress {
	return &PerAddress{Rate: rate, Burst: burst, buckets: map[string]*bucket{}, now: time.Now}
}

// Allow takes a token for addr, or says how long until one is there.
func (l *PerAddress) Allow(addr string) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if now.Sub(l.swept) > time.Minute {
		// Idle buckets are full again: forgetting them changes nothing.
		for a, b := range l.buckets {
			if now.Sub(b.at).Seconds()*l.Rate >= l.Burst {
				delete(l.buckets, a)
			}
		}
		l.swept = now
	}
	b, ok := l.buckets[addr]
	if !ok {
		b = &bucket{tokens: l.Burst, at: now}
		l.buckets[addr] = b
	}
	b.tokens = math.Min(l.Burst, b.tokens+now.Sub(b.at).Seconds()*l.Rate)
	b.at = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / l.Rate * float64(time.Second))
}

// Wrap answers 429 to a caller over its address's rate. Callers on this
// machine (loopback) are not limited: they are the operator's own
// processes (a one-machine cloud's node, a fleet simulation); jobs have no
// route to loopback (their VMs' own network).
func (l *PerAddress) Wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			host = r.RemoteAddr
		}
		if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
			h.ServeHTTP(w, r)
			return
		}
		if ok, wait := l.Allow(host); !ok {
			secs := int(math.Ceil(wait.Seconds()))
			w.Header().Set("Retry-After", fmt.Sprint(max(secs, 1)))
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusTooManyRequests)
			fmt.Fprintf(w, `{"status":"FAIL","message":"too many requests from %s to this route: at most %g a second; try again in %ds"}`+"\n",
				host, l.Rate, max(secs, 1))
			return
		}
		h.ServeHTTP(w, r)
	})
}
