package faultproxy

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func get(t *testing.T, ctx context.Context, url string) (int, error) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

func TestFaults(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	defer backend.Close()
	p := New(t, backend.URL)
	ctx := context.Background()
	if code, err := get(t, ctx, p.URL+"/a/b"); err != nil || code != 200 {
		t.Fatalf("pass-through: %d %v", code, err)
	}
	p.Set("/a", Fault{Status: 502})
	p.Set("/a/b", Fault{Status: 500})
	if code, _ := get(t, ctx, p.URL+"/a/b/c"); code != 500 {
		t.Fatalf("longest prefix: %d", code)
	}
	if code, _ := get(t, ctx, p.URL+"/a/x"); code != 502 {
		t.Fatalf("prefix /a: %d", code)
	}
	if p.Hits("/a") != 1 || p.Hits("/a/b") != 1 {
		t.Fatalf("hits %d %d", p.Hits("/a"), p.Hits("/a/b"))
	}

	// A hung request stays hung until its client gives up ...
	p.Set("/hang", Fault{Hang: true})
	hctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := get(t, hctx, p.URL+"/hang"); err == nil {
		t.Fatal("hung request answered")
	}
	// ... or the proxy heals.
	done := make(chan int)
	go func() { code, _ := get(t, ctx, p.URL+"/hang"); done <- code }()
	for p.Hits("/hang") < 2 {
		time.Sleep(time.Millisecond)
	}
	p.Heal()
	if code := <-done; code != 503 {
		t.Fatalf("released hung request: %d", code)
	}
	if code, _ := get(t, ctx, p.URL+"/hang"); code != 200 {
		t.Fatalf("after heal: %d", code)
	}
}
