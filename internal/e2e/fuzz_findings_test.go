package e2e

import (
	"net/http"
	"strings"
	"testing"
)

// TestFuzzFindings: what a fuzzing run of both servers found, each fixed.
// /ui/static/<invalid UTF-8> answered 500; a repository name with control
// characters was echoed into WWW-Authenticate (a header built from a
// request's path: response splitting); a Bearer token that is no node's got
// 410 "disjoined" from the agent API instead of 401.
func TestFuzzFindings(t *testing.T) {
	c := authedCloud(t, false)
	ctl, reg := c.Controllers[0].URL, c.Registry.URL
	for _, p := range []string{"/ui/static/%ff", "/ui/static/%ff%fe.css", "/ui/static/a%00b", "/ui/static/x/../../etc/passwd"} {
		resp, err := http.Get(ctl + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode >= 500 {
			t.Errorf("GET %s: HTTP %d", p, resp.StatusCode)
		}
	}
	for _, p := range []string{"/v2/a%0d%0aSet-Cookie:%20x=1/manifests/latest", "/v2/a%09b/blobs/uploads/", "/v2/ok/manifests/latest"} {
		req, _ := http.NewRequest(http.MethodGet, reg+p, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		ch := resp.Header.Get("WWW-Authenticate")
		if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("Set-Cookie") != "" ||
			strings.ContainsAny(ch, "\r\n\t\x00") || strings.Contains(ch, "Set-Cookie") {
			t.Errorf("GET %s: HTTP %d, challenge %q", p, resp.StatusCode, ch)
		}
		if p == "/v2/ok/manifests/latest" && !strings.Contains(ch, `scope="repository:ok:pull"`) {
			t.Errorf("a valid name's challenge lost its scope: %q", ch)
		}
	}
	for _, tok := range []string{"not-a-node.secret", "x.y", "nothing"} {
		req, _ := http.NewRequest(http.MethodPost, ctl+"/api/v1/agent/heartbeat", strings.NewReader(`{"node_id":"x","lease_id":1}`))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("agent call with token %q: HTTP %d, want 401", tok, resp.StatusCode)
		}
	}
}
