package httpserve

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestAccessLog(t *testing.T) {
	var logs bytes.Buffer
	mux := http.NewServeMux()
	mux.HandleFunc("POST /things/{id}", func(w http.ResponseWriter, r *http.Request) {
		SetCaller(r.Context(), "key:ci")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.Copy(w, strings.NewReader("made")) // through ReadFrom
	})
	mux.HandleFunc("GET /panics", func(http.ResponseWriter, *http.Request) { panic("boom") })
	srv := httptest.NewServer(AccessLog(slog.New(slog.NewJSONHandler(&logs, nil)), "api", mux))
	defer srv.Close()

	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/things/42?token=hidden", strings.NewReader("body-secret"))
	req.Header.Set(RequestIDHeader, "job-1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get(RequestIDHeader) != "job-1" {
		t.Fatalf("request id %q, want the client's", resp.Header.Get(RequestIDHeader))
	}
	for _, bad := range []string{"two words", strings.Repeat("x", 65), "quote\"d"} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/nothing", nil)
		req.Header.Set(RequestIDHeader, bad)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get(RequestIDHeader); got == bad || len(got) != 24 {
			t.Fatalf("client id %q answered with %q, want one made here", bad, got)
		}
	}
	if resp, err := http.Get(srv.URL + "/panics"); err == nil {
		resp.Body.Close()
	}

	var got []map[string]any
	for _, l := range bytes.Split(bytes.TrimSpace(logs.Bytes()), []byte("\n")) {
		var m map[string]any
		if err := json.Unmarshal(l, &m); err != nil {
			t.Fatalf("log line %s: %v", l, err)
		}
		got = append(got, m)
	}
	if len(got) < 5 {
		t.Fatalf("%d lines for 5 requests:\n%s", len(got), logs.String())
	}
	first := got[0]
	for k, v := range map[string]any{"msg": "request", "server": "api", "method": "POST", "route": "POST /things/{id}",
		"status": 201.0, "bytes": 4.0, "caller": "key:ci", "request_id": "job-1", "remote": "127.0.0.1"} {
		if first[k] != v {
			t.Errorf("%s: %v, want %v", k, first[k], v)
		}
	}
	if got[1]["route"] != "unmatched" || got[1]["status"] != 404.0 {
		t.Errorf("unmatched request logged as %v", got[1])
	}
	if got[4]["route"] != "GET /panics" || got[4]["status"] != 500.0 {
		t.Errorf("a panicking handler logged as %v", got[4])
	}
	for _, s := range []string{"hidden", "body-secret"} {
		if strings.Contains(logs.String(), s) {
			t.Errorf("the log holds %q", s)
		}
	}
}

// TestAccessLogOff: without a logger requests still get their id.
func TestAccessLogOff(t *testing.T) {
	srv := httptest.NewServer(AccessLog(nil, "api", http.NotFoundHandler()))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if len(resp.Header.Get(RequestIDHeader)) != 24 {
		t.Fatalf("request id %q", resp.Header.Get(RequestIDHeader))
	}
}
