package s3_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/corral-build/corral/internal/registry/storage"
	"github.com/corral-build/corral/internal/registry/storage/s3"
	"github.com/corral-build/corral/internal/registry/storage/storagetest"
	"github.com/corral-build/corral/internal/testenv"
	"github.com/corral-build/corral/internal/testenv/faultproxy"
)

func TestConformance(t *testing.T) {
	srv := testenv.StartS3(t)
	var n atomic.Int64
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		// One bucket, a fresh prefix per case: also proves prefixes isolate.
		b, err := s3.New(context.Background(), s3.Config{Endpoint: srv.Endpoint, Bucket: srv.Bucket,
			Prefix: fmt.Sprintf("case%d", n.Add(1)), PathStyle: true})
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}

func TestNewRefusesBadConfig(t *testing.T) {
	srv := testenv.StartS3(t)
	for _, tc := range []struct {
		cfg  s3.Config
		want string
	}{
		{s3.Config{Endpoint: srv.Endpoint, PathStyle: true}, "bucket name is required"},
		{s3.Config{Endpoint: "minio:9000", Bucket: srv.Bucket}, "want http(s)://host"},
		{s3.Config{Endpoint: srv.Endpoint, Bucket: "no-such-bucket", PathStyle: true}, "s3 bucket no-such-bucket"},
	} {
		_, err := s3.New(context.Background(), tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want an error containing %q", tc.cfg, err, tc.want)
		}
	}
}

// TestHungEndpointFailsTheCall: an S3 endpoint that accepts requests and
// never answers fails each call after the response deadline (and the SDK's
// retries) instead of blocking the registry forever.
func TestHungEndpointFailsTheCall(t *testing.T) {
	srv := testenv.StartS3(t)
	proxy := faultproxy.New(t, srv.Endpoint)
	b, err := s3.New(context.Background(), s3.Config{Endpoint: proxy.URL, Bucket: srv.Bucket, PathStyle: true,
		ResponseTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	proxy.Set("/", faultproxy.Fault{Hang: true})
	done := make(chan error, 1)
	go func() {
		_, err := b.Stat(context.Background(), "chunks/ab/cd")
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("Stat against a hung endpoint: %v, want a timeout error", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Stat against a hung endpoint never returned")
	}
}

// TestLargePutIsMultipartAndAtomic: an object over a part (a pack) goes up
// in parts and reads back whole; a stream that breaks midway leaves no
// object and no unfinished upload.
func TestLargePutIsMultipartAndAtomic(t *testing.T) {
	srv := testenv.StartS3(t)
	b, err := s3.New(context.Background(), s3.Config{Endpoint: srv.Endpoint, Bucket: srv.Bucket, PathStyle: true, Prefix: "large"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	data := make([]byte, 2*s3.PartSize+12345)
	rand.Read(data)
	if err := b.Put(ctx, "packs/big.pack", bytes.NewReader(data), storage.Unsynced); err != nil {
		t.Fatal(err)
	}
	rc, err := b.Open(ctx, "packs/big.pack", s3.PartSize-7)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, data[s3.PartSize-7:]) {
		t.Fatalf("read back %d bytes that differ from what was put", len(got))
	}
	broken := io.MultiReader(bytes.NewReader(data[:s3.PartSize+100]), iotest.ErrReader(errors.New("client went away")))
	if err := b.Put(ctx, "packs/broken.pack", broken, storage.Unsynced); err == nil {
		t.Fatal("a broken stream was stored")
	}
	if _, err := b.Stat(ctx, "packs/broken.pack"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("half an object is visible: %v", err)
	}
	if n, err := b.PurgeIncomplete(ctx, 0); err != nil || n != 0 {
		t.Fatalf("unfinished uploads left: %d (%v)", n, err)
	}
}

// TestBodiesGoUnsignedWhereTheServerTakesThem: object bodies go up as
// UNSIGNED-PAYLOAD (the registry verifies every chunk's sha256 itself; the
// SDK hashing each part for its signature hashed every byte once more),
// and signed to a server that refuses unsigned ones.
func TestBodiesGoUnsignedWhereTheServerTakesThem(t *testing.T) {
	srv := testenv.StartS3(t)
	target, _ := url.Parse(srv.Endpoint)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var refuse atomic.Bool
	var mu sync.Mutex
	var seen []string // x-amz-content-sha256 of every PUT with a body
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.ContentLength > 0 {
			h := r.Header.Get("X-Amz-Content-Sha256")
			if refuse.Load() && h == "UNSIGNED-PAYLOAD" {
				w.Header().Set("Content-Type", "application/xml")
				w.WriteHeader(http.StatusBadRequest)
				io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>NotImplemented</Code><Message>unsigned payloads are refused here</Message></Error>`)
				return
			}
			mu.Lock()
			seen = append(seen, h)
			mu.Unlock()
		}
		proxy.ServeHTTP(w, r)
	}))
	defer front.Close()
	ctx := context.Background()
	large := make([]byte, s3.PartSize+4321)
	rand.Read(large)
	for _, refusing := range []bool{false, true} {
		refuse.Store(refusing)
		mu.Lock()
		seen = nil
		mu.Unlock()
		b, err := s3.New(ctx, s3.Config{Endpoint: front.URL, Bucket: srv.Bucket, PathStyle: true, Prefix: fmt.Sprint("unsigned-", refusing)})
		if err != nil {
			t.Fatalf("refusing=%v: %v", refusing, err)
		}
		for p, data := range map[string][]byte{"small": []byte("record"), "packs/large.pack": large} {
			if err := b.Put(ctx, p, bytes.NewReader(data), storage.Replace); err != nil {
				t.Fatalf("refusing=%v: put %s: %v", refusing, p, err)
			}
			rc, err := b.Open(ctx, p, 0)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(rc)
			rc.Close()
			if !bytes.Equal(got, data) {
				t.Fatalf("refusing=%v: %s reads back different bytes", refusing, p)
			}
		}
		mu.Lock()
		for _, h := range seen {
			if unsigned := h == "UNSIGNED-PAYLOAD"; unsigned == refusing || h == "" {
				t.Errorf("refusing=%v: a body went up with x-amz-content-sha256 %q", refusing, h)
			}
		}
		if len(seen) < 4 { // the probes, a small put, the parts of a large one
			t.Errorf("refusing=%v: %d bodies seen", refusing, len(seen))
		}
		mu.Unlock()
	}
}
