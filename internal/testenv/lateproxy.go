package testenv

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"
)

// lateProxy is a reverse proxy whose target is known only after it starts:
// the registry is told the controller's URL before the controller (which
// needs the registry's) exists.
type lateProxy struct {
	URL string
	to  atomic.Pointer[url.URL]
}

func newLateProxy(t testing.TB) *lateProxy {
	p := &lateProxy{}
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		if u := p.to.Load(); u != nil {
			r.SetURL(u)
			r.Out.Host = u.Host
		}
	}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.to.Load() == nil {
			http.Error(w, "the controller has not started yet", http.StatusServiceUnavailable)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

func (p *lateProxy) target(raw string) {
	u, err := url.Parse(raw)
	if err != nil {
		panic(err)
	}
	p.to.Store(u)
}
