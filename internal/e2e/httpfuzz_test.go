package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/controller"
	ctlhttp "github.com/corral-build/corral/internal/controller/httpapi"
	regdaemon "github.com/corral-build/corral/internal/registry/daemon"
	reghttp "github.com/corral-build/corral/internal/registry/httpapi"
	"github.com/corral-build/corral/internal/testenv"
)

// TestHTTPFuzz sends random requests to every controller and registry route
// (the route tables, plus the OCI operations): random methods, path values,
// query parameters, headers, credentials and bodies (mutated valid bodies
// and noise). No answer may be a 5xx, nothing may panic, the heap stays
// bounded and both servers still serve afterwards. CORRAL_HTTP_FUZZ
// sets the duration (default 5 s; `make fuzz` runs it for a minute);
// CORRAL_HTTP_FUZZ_SEED replays a run.
func TestHTTPFuzz(t *testing.T) {
	dur := 5 * time.Second
	if d, err := time.ParseDuration(os.Getenv("CORRAL_HTTP_FUZZ")); err == nil {
		dur = d
	}
	seed := uint64(time.Now().UnixNano())
	if s, err := strconv.ParseUint(os.Getenv("CORRAL_HTTP_FUZZ_SEED"), 10, 64); err == nil {
		seed = s
	}
	t.Logf("http fuzz seed %d (CORRAL_HTTP_FUZZ_SEED replays it), %s", seed, dur)
	rng := rand.New(rand.NewPCG(seed, seed^0xf022))

	c := testenv.StartCluster(t, testenv.Options{Registry: true,
		Auth:         controller.AuthConfig{Enabled: true, RootToken: "s3cret", APIKeys: true},
		RegistryAuth: &regdaemon.Auth{Enabled: true, RootToken: "s3cret"},
		Nodes:        []testenv.NodeOptions{{Name: "n1", Capacity: 2}}})
	ctl, reg := c.Controllers[0].URL, c.Registry.URL
	root := basic("root", "s3cret")

	ids := []string{c.TemplateID, "", "x", "..", "../../etc/passwd", strings.Repeat("a", 300), "%00", "null", "-1",
		"sha256:" + strings.Repeat("0", 64), "sha256:zz", "🐄", "a/b", "v1"}
	pick := func(s []string) string { return s[rng.IntN(len(s))] }
	values := func() string {
		switch rng.IntN(6) {
		case 0:
			return pick(ids)
		case 1:
			return strconv.Itoa(rng.IntN(100000) - 50)
		case 2:
			return strings.Repeat("9", 1+rng.IntN(30))
		case 3:
			return "repository:" + pick(ids) + ":" + pick([]string{"pull", "push", "delete", "*", "steal", ""})
		default:
			b := make([]byte, rng.IntN(40))
			for i := range b {
				b[i] = byte(rng.IntN(256))
			}
			return string(b)
		}
	}
	params := []string{"id", "tag", "limit", "offset", "state", "node_id", "group_id", "external_id", "scope",
		"service", "mount", "from", "digest", "upload", "since", "n", "last", "type", "instance_id"}
	seeds := []string{
		`{"vmid":"` + c.TemplateID + `","count":2,"startup_script":"ZWNobyBoaQ==","metadata":{"a":[1,{"b":null}]},"priority":3}`,
		`{"name":"g","description":"d","fallback_group_id":"x"}`,
		`{"node_id":"x","capacity":3,"max_vcpu_count":2,"drain_mode":true}`,
		`{"name":"p","permissions":["view"],"members":["key:k"]}`,
		`{"template_id":"` + c.TemplateID + `","tag":"v1","group_id":"g"}`,
		`{"id":"x","tag":"t","description":"d","script":"ZWNobw=="}`,
		`{"digests":["` + strings.Repeat("0", 64) + `"],"upload_id":"u"}`,
		`{"schemaVersion":2,"config":{"digest":"sha256:` + strings.Repeat("0", 64) + `","size":1},"layers":[]}`,
		`{"report":{"node_id":"n","node_name":"n","capacity":1}}`,
		`{"instance_ids":["x"],"node_ids":["y"],"count":1e309}`,
	}
	mutate := func(s string) []byte {
		b := []byte(s)
		for range rng.IntN(6) {
			if len(b) == 0 {
				break
			}
			i := rng.IntN(len(b))
			switch rng.IntN(5) {
			case 0:
				b[i] = byte(rng.IntN(256))
			case 1:
				b = append(b[:i], b[i+1:]...)
			case 2:
				b = append(b[:i], append([]byte(pick([]string{`"`, `{`, `[`, `]`, `}`, `,`, `:`, `null`, `-0`, `1e999`, `"\u0000"`})), b[i:]...)...)
			case 3:
				b = append(b[:i], append(bytes.Repeat([]byte("["), rng.IntN(100)), b[i:]...)...)
			default:
				b = b[:i]
			}
		}
		return b
	}
	creds := []string{"", root, root, root, basic("root", "nope"), "Bearer " + base64.StdEncoding.EncodeToString([]byte(`{"userName":"k","token":"t","sessionId":"s"}`)),
		"Bearer a.b.c", "Bearer test-token", "Basic !!", "Digest x"}
	type target struct{ base, method, path string }
	var targets []target
	fill := func(p string) string {
		for _, ph := range []string{"{group_id}", "{id}", "{digest}"} {
			p = strings.ReplaceAll(p, ph, pick(ids))
		}
		return p
	}
	for _, p := range ctlhttp.Patterns() {
		m, path, _ := strings.Cut(p, " ")
		targets = append(targets, target{ctl, m, path})
	}
	for _, p := range reghttp.Patterns() {
		m, path, ok := strings.Cut(p, " ")
		if !ok {
			m, path = "", p
		}
		targets = append(targets, target{reg, m, path})
	}
	for _, p := range []string{"/v2/", "/v2/_catalog", "/v2/r/tags/list", "/v2/r/manifests/v1", "/v2/r/blobs/{digest}",
		"/v2/r/blobs/uploads/", "/v2/r/blobs/uploads/{id}", "/", "/metrics", "/api/v1/nothing"} {
		targets = append(targets, target{reg, "", p}, target{ctl, "", p})
	}
	methods := []string{"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"}
	cl := &http.Client{Timeout: 30 * time.Second}
	var peak uint64
	n, fails := 0, 0
	for deadline := time.Now().Add(dur); time.Now().Before(deadline) && fails < 20; n++ {
		tg := targets[rng.IntN(len(targets))]
		method := tg.method
		if method == "" || rng.IntN(8) == 0 {
			method = pick(methods)
		}
		path := fill(tg.path)
		q := []string{}
		for range rng.IntN(4) {
			q = append(q, pick(params)+"="+urlEscape(values()))
		}
		if len(q) > 0 {
			path += "?" + strings.Join(q, "&")
		}
		var body []byte
		switch rng.IntN(4) {
		case 0:
		case 1:
			body = make([]byte, rng.IntN(4096))
			for i := range body {
				body[i] = byte(rng.IntN(256))
			}
		default:
			body = mutate(pick(seeds))
		}
		req, err := http.NewRequestWithContext(context.Background(), method, tg.base+path, bytes.NewReader(body))
		if err != nil {
			continue // not a request a client can send
		}
		if cr := pick(creds); cr != "" {
			req.Header.Set("Authorization", cr)
		}
		for range rng.IntN(3) {
			req.Header.Set(pick([]string{"Content-Type", "Range", "Content-Range", "Idempotency-Key", "Accept"}), values())
		}
		resp, err := cl.Do(req)
		if err != nil {
			if strings.Contains(err.Error(), "invalid header field") || strings.Contains(err.Error(), "invalid method") {
				continue // the client refused to send it
			}
			fails++
			t.Errorf("%s %s: %v", method, tg.base+path, err)
			continue
		}
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if resp.StatusCode >= 500 {
			fails++
			t.Errorf("%s %s (%d-byte body %.80q, auth %q): HTTP %d %.300s", method, tg.base+path, len(body), body,
				req.Header.Get("Authorization"), resp.StatusCode, data)
		}
		if n%200 == 0 {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
		}
	}
	const heapBound = 1 << 30
	if peak > heapBound {
		t.Errorf("heap in use reached %d MiB (bound %d MiB)", peak>>20, heapBound>>20)
	}
	for _, u := range []string{ctl + "/api/v1/status", reg + "/registry/status"} {
		req, _ := http.NewRequest("GET", u, nil)
		req.Header.Set("Authorization", root)
		resp, err := cl.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("after %d fuzzed requests %s does not answer: %v", n, u, err)
		}
		resp.Body.Close()
	}
	t.Logf("%d requests, peak heap %d MiB", n, peak>>20)
	if fails >= 20 {
		t.Fatal(fmt.Sprintf("stopped after %d failures", fails))
	}
}

func urlEscape(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~:*", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}
