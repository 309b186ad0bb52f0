package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"
)

// call sends a raw request (as a CI plugin would) and decodes the envelope
// generically, so tests see exactly what went over the wire.
func call(t *testing.T, method, url, contentType, body string) (int, map[string]any) {
	t.Helper()
	headers := map[string]string{}
	if contentType != "" {
		headers["Content-Type"] = contentType
	}
	return callH(t, method, url, body, headers)
}

func callH(t *testing.T, method, url, body string, headers map[string]string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewBufferString(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var env map[string]any
	if err := json.Unmarshal(data, &env); err != nil {
		t.Fatalf("%s %s: HTTP %d, body is not JSON: %s", method, url, resp.StatusCode, data)
	}
	return resp.StatusCode, env
}

// ok asserts an OK envelope and returns its body.
func ok(t *testing.T, method, url, body string) any {
	t.Helper()
	code, env := call(t, method, url, "application/json", body)
	if code != 200 || env["status"] != "OK" || env["message"] != "" {
		t.Fatalf("%s %s %s: want OK, got HTTP %d %v", method, url, body, code, env)
	}
	return env["body"]
}

// fail asserts a FAIL envelope with the exact message and HTTP code.
func fail(t *testing.T, method, url, body string, wantCode int, wantMsg string) {
	t.Helper()
	code, env := call(t, method, url, "", body)
	if code != wantCode || env["status"] != "FAIL" || env["message"] != wantMsg {
		t.Fatalf("%s %s %s: want HTTP %d FAIL %q, got HTTP %d %v", method, url, body, wantCode, wantMsg, code, env)
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
