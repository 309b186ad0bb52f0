package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/controller"
	regdaemon "github.com/corral-build/corral/internal/registry/daemon"
	"github.com/corral-build/corral/internal/testenv"
)

// lockedBuffer collects log lines written from many goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestRequestsAreLogged: every controller and registry request is logged at
// info with its method, route pattern, status, caller and request id (the
// client's own X-Request-Id, or one made and returned); never a secret, a
// body or a query. Before, no request was logged at any level.
func TestRequestsAreLogged(t *testing.T) {
	logs := &lockedBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, nil))
	c := testenv.StartCluster(t, testenv.Options{Log: log, Registry: true,
		RegistryAuth: &regdaemon.Auth{Enabled: true, RootToken: "reg-s3cret"},
		Auth:         controller.AuthConfig{Enabled: true, RootToken: "root-s3cret"},
		Nodes:        []testenv.NodeOptions{{Name: "logged", Capacity: 1}}})

	get := func(url, user, pass, id string) *http.Response {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.SetBasicAuth(user, pass)
		if id != "" {
			req.Header.Set("X-Request-Id", id)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	resp := get(c.Controllers[0].URL+"/api/v1/vm?note=query-secret", "root", "root-s3cret", "ci-job-42")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Request-Id") != "ci-job-42" {
		t.Fatalf("GET /api/v1/vm: %d, request id %q; want 200 and the client's id back", resp.StatusCode, resp.Header.Get("X-Request-Id"))
	}
	resp = get(c.Controllers[0].URL+"/api/v1/vm", "root", "bad-pass-9731", "bad id with spaces")
	made := resp.Header.Get("X-Request-Id")
	if resp.StatusCode != http.StatusUnauthorized || !regexp.MustCompile(`^[0-9a-f]{24}$`).MatchString(made) {
		t.Fatalf("a refused request: %d, request id %q; want 401 and an id made by the server", resp.StatusCode, made)
	}
	if resp := get(c.Registry.URL+"/registry/vm", "root", "reg-s3cret", "reg-7"); resp.StatusCode != http.StatusOK {
		t.Fatalf("registry list: %d", resp.StatusCode)
	}
	// The node's own polls are logged under its identity.
	c.WaitNodeState(c.Nodes()[0].Agent.ID(), "Active", 10*time.Second)

	type line struct {
		Msg, Server, Method, Route, Caller, RequestID string
		Status                                        int
	}
	var lines []line
	sc := bufio.NewScanner(strings.NewReader(logs.String()))
	for sc.Scan() {
		var l struct {
			Msg       string `json:"msg"`
			Server    string `json:"server"`
			Method    string `json:"method"`
			Route     string `json:"route"`
			Caller    string `json:"caller"`
			RequestID string `json:"request_id"`
			Status    int    `json:"status"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "request" {
			lines = append(lines, line(l))
		}
	}
	find := func(what string, ok func(line) bool) line {
		t.Helper()
		for _, l := range lines {
			if ok(l) {
				return l
			}
		}
		t.Fatalf("no access log line for %s in:\n%s", what, logs.String())
		return line{}
	}
	want := func(got, w line) {
		t.Helper()
		if got != w {
			t.Errorf("logged %+v, want %+v", got, w)
		}
	}
	want(find("the client's request", func(l line) bool { return l.RequestID == "ci-job-42" }),
		line{"request", "controller", "GET", "GET /api/v1/vm", "root", "ci-job-42", 200})
	want(find("the refused request", func(l line) bool { return l.RequestID == made }),
		line{"request", "controller", "GET", "GET /api/v1/vm", "", made, 401})
	want(find("the registry request", func(l line) bool { return l.RequestID == "reg-7" }),
		line{"request", "registry", "GET", "GET /registry/vm", "root", "reg-7", 200})
	node := find("a node's poll", func(l line) bool { return strings.HasPrefix(l.Route, "GET /api/v1/agent/") })
	if node.Caller != "node:"+c.Nodes()[0].Agent.ID() {
		t.Errorf("a node's poll is logged as caller %q, want node:<its id>", node.Caller)
	}
	for _, secret := range []string{"root-s3cret", "reg-s3cret", "query-secret", "test-token", "bad-pass-9731"} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the logs hold %q", secret)
		}
	}
}
