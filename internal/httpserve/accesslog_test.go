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
		// A reader without WriteTo, so io.Copy goes through ReadFrom.
		_, _ = io.Copy(w, io.LimitReader(strings.NewReader("made"), 100))
	})
	mux.HandleFunc("GET /panics", func(http.ResponseWriter, *http.Request) { panic("boom") })
	mux.HandleFunc("GET /quiet", func(http.ResponseWriter, *http.Request) {})
	srv := httptest.NewServer(AccessLog(slog.New(slog.NewJSONHandler(&logs, nil)), "api", mux))
	defer srv.Close()

	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/things/42?token=hidden", strings.NewReader("body-secret"))
	req.Header.Set(RequestIDHeader, "job-1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Header.Get(RequestIDHeader) != "job-1" || string(body) != "made" {
		t.Fatalf("request id %q, body %q; want the client's id and the handler's body", resp.Header.Get(RequestIDHeader), body)
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
	if resp, err := http.Get(srv.URL + "/quiet"); err == nil {
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
	if len(got) < 6 {
		t.Fatalf("%d lines for 6 requests:\n%s", len(got), logs.String())
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
	if got[5]["route"] != "GET /quiet" || got[5]["status"] != 200.0 || got[5]["bytes"] != 0.0 {
		t.Errorf("a handler that writes nothing logged as %v", got[5])
	}
	for _, s := range []string{"hidden", "body-secret"} {
		if strings.Contains(logs.String(), s) {
			t.Errorf("the log holds %q", s)
		}
	}
}

// TestAccessLogOff: without a logger requests still get their id and are
// served.
func TestAccessLogOff(t *testing.T) {
	srv := httptest.NewServer(AccessLog(nil, "api", http.NotFoundHandler()))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if len(resp.Header.Get(RequestIDHeader)) != 24 || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("request id %q, HTTP %d", resp.Header.Get(RequestIDHeader), resp.StatusCode)
	}
}

// TestRequestIDs: a client's id is kept when it is at most 64 plain
// characters (letters, digits, - _ . :), and the handler sees the id the
// answer carries, the client's or the one made.
func TestRequestIDs(t *testing.T) {
	for _, ok := range []string{"azAZ09-_.:", strings.Repeat("x", 64)} {
		if !validRequestID(ok) {
			t.Errorf("%q refused", ok)
		}
	}
	for _, bad := range []string{"", "`", "{", "@", "[", "/", ";", "é", strings.Repeat("x", 65)} {
		if validRequestID(bad) {
			t.Errorf("%q kept", bad)
		}
	}
	var seen string
	srv := httptest.NewServer(AccessLog(slog.New(slog.NewTextHandler(io.Discard, nil)), "api",
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { seen = r.Header.Get(RequestIDHeader) })))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if id := resp.Header.Get(RequestIDHeader); id == "" || seen != id {
		t.Fatalf("the handler saw id %q, the answer carries %q", seen, id)
	}
}

// TestRecorderStatus: the status is the first final one written (an early
// 1xx does not count), 200 when the handler only writes or writes nothing.
func TestRecorderStatus(t *testing.T) {
	for _, tc := range []struct {
		name string
		want int
		h    func(http.ResponseWriter)
	}{
		{"early hints, then 201", 201, func(w http.ResponseWriter) {
			w.WriteHeader(http.StatusEarlyHints)
			w.WriteHeader(201)
			w.WriteHeader(500)
		}},
		{"a write, then 500", 200, func(w http.ResponseWriter) { _, _ = w.Write([]byte("x")); w.WriteHeader(500) }},
		{"nothing", 200, func(http.ResponseWriter) {}},
		{"200, then 500", 200, func(w http.ResponseWriter) { w.WriteHeader(200); w.WriteHeader(500) }},
		{"a copy, then 500", 200, func(w http.ResponseWriter) {
			_, _ = io.Copy(w, io.LimitReader(strings.NewReader("x"), 9))
			w.WriteHeader(500)
		}},
	} {
		under := httptest.NewRecorder()
		rec := NewRecorder(under)
		tc.h(rec)
		sent := tc.want // what the writer below got first (a 1xx is passed on as it is)
		if strings.HasPrefix(tc.name, "early hints") {
			sent = http.StatusEarlyHints
		}
		if rec.Status() != tc.want || under.Code != sent || rec.bytes != int64(under.Body.Len()) {
			t.Errorf("%s: status %d (sent %d), %d bytes counted of %d; want %d", tc.name, rec.Status(), under.Code,
				rec.bytes, under.Body.Len(), tc.want)
		}
	}
}
