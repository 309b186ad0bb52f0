package client

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/retry"
)

// TestNewLeavesCallerSliceAlone: New used to rewrite the caller's URL slice
// in place (a data race when callers share it).
func TestNewLeavesCallerSliceAlone(t *testing.T) {
	urls := []string{"http://a:1/", "http://b:2//"}
	if _, err := New(urls, ""); err != nil {
		t.Fatal(err)
	}
	if urls[0] != "http://a:1/" || urls[1] != "http://b:2//" {
		t.Fatalf("caller's slice changed: %q", urls)
	}
}

// hung is a server that accepts requests and never answers them.
func hung(t *testing.T) string {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	return srv.URL
}

// returns runs f and fails the test if it has not returned within a minute:
// calls without a deadline against a hung server never would.
func returns(t *testing.T, what string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(time.Minute):
		t.Fatalf("%s against a hung server never returned", what)
		return nil
	}
}

// TestCallsToHungServersEnd: controller and registry calls made without a
// caller deadline still end, under the retry policy's per-attempt bound.
func TestCallsToHungServersEnd(t *testing.T) {
	quick := retry.Policy{Attempts: 2, Initial: time.Millisecond, Max: time.Millisecond, PerAttempt: 100 * time.Millisecond}
	c, err := New([]string{hung(t)}, "")
	if err != nil {
		t.Fatal(err)
	}
	c.Retry = quick
	if err := returns(t, "controller GET", func() error { _, err := c.Status(context.Background()); return err }); err == nil {
		t.Fatal("Status of a hung controller succeeded")
	}
	if err := returns(t, "controller POST", func() error {
		_, err := c.StartInstances(context.Background(), map[string]any{"vmid": "x"})
		return err
	}); err == nil {
		t.Fatal("StartInstances on a hung controller succeeded")
	}
	r, err := NewRegistry(hung(t))
	if err != nil {
		t.Fatal(err)
	}
	r.Retry = quick
	if err := returns(t, "registry GET", func() error { _, err := r.Templates(context.Background()); return err }); err == nil {
		t.Fatal("Templates of a hung registry succeeded")
	}
}

// TestRetryStopsOnClientErrors: a 4xx FAIL is final, a 5xx is retried.
func TestRetryStopsOnClientErrors(t *testing.T) {
	for _, tc := range []struct {
		code, wantCalls int
	}{{400, 1}, {404, 1}, {503, 3}} {
		calls := 0
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			calls++
			w.WriteHeader(tc.code)
			w.Write([]byte(`{"status":"FAIL","message":"no"}`))
		}))
		c, _ := New([]string{srv.URL}, "")
		c.Retry = retry.Policy{Attempts: 3, Initial: time.Millisecond, Max: time.Millisecond, PerAttempt: 10 * time.Second}
		_, err := c.Status(context.Background())
		srv.Close()
		if err == nil || calls != tc.wantCalls {
			t.Errorf("HTTP %d: %d calls (err %v), want %d", tc.code, calls, err, tc.wantCalls)
		}
	}
}

// TestFailErrorNamesItsServer: a FAIL from the registry read "controller:
// tag exists ..." to a user pushing a template.
func TestFailErrorNamesItsServer(t *testing.T) {
	fail := func() *http.Response {
		body := `{"status":"FAIL","message":"tag exists","code":409}`
		return &http.Response{StatusCode: http.StatusConflict, Body: io.NopCloser(strings.NewReader(body))}
	}
	if err := decodeRegistryEnvelope(fail(), nil, "POST commit"); err == nil || !strings.HasPrefix(err.Error(), "registry: tag exists") {
		t.Errorf("a registry's FAIL: %v, want it to start with \"registry: tag exists\"", err)
	}
	resp := fail()
	resp.StatusCode = http.StatusBadRequest
	if err := decodeEnvelope(resp, nil, "POST vm"); err == nil || !strings.HasPrefix(err.Error(), "controller: tag exists") {
		t.Errorf("a controller's FAIL: %v, want it to start with \"controller: tag exists\"", err)
	}
}
