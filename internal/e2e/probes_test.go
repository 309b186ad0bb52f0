package e2e

import (
	"io"
	"net/http"
	"testing"
	"time"
)

// TestProbes: /livez and /readyz answer without credentials on the
// controller and the registry with auth on (the Kubernetes readiness probe
// on /api/v1/status got 401), and the controller is not ready without etcd.
func TestProbes(t *testing.T) {
	c := authedCloud(t, false)
	get := func(url string) (int, string) {
		t.Helper()
		cl := http.Client{Timeout: 10 * time.Second}
		resp, err := cl.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, base := range []string{c.Controllers[0].URL, c.Registry.URL} {
		for _, p := range []string{"/livez", "/readyz"} {
			if code, body := get(base + p); code != 200 || body != "ok\n" {
				t.Errorf("GET %s%s: %d %q", base, p, code, body)
			}
		}
	}
	c.Etcd.Close()
	if code, _ := get(c.Controllers[0].URL + "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("readyz without etcd: HTTP %d, want 503", code)
	}
	if code, _ := get(c.Controllers[0].URL + "/livez"); code != 200 {
		t.Errorf("livez without etcd: HTTP %d, want 200", code)
	}
}
