package s3_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"strings"
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
