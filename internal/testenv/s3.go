package testenv

import (
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	regdaemon "github.com/corral-build/corral/internal/registry/daemon"
	"github.com/corral-build/corral/internal/registry/storage/s3"
)

// S3Server is a real S3-compatible server (versitygw over a directory).
type S3Server struct {
	Endpoint string
	Bucket   string // created empty for the test
	Root     string // the directory behind the server; Root/Bucket is the bucket
}

// StartS3 runs versitygw on a free loopback port with an empty bucket and
// sets AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for the test. The binary is
// $CORRAL_TEST_VERSITYGW or versitygw on PATH; without it the test is skipped,
// unless CORRAL_TEST_S3=1 (set by .ci/run, which installs it) makes that fatal.
func StartS3(t *testing.T) S3Server {
	t.Helper()
	bin := os.Getenv("CORRAL_TEST_VERSITYGW")
	if bin == "" {
		bin, _ = exec.LookPath("versitygw")
	}
	if bin == "" {
		if os.Getenv("CORRAL_TEST_S3") == "1" {
			t.Fatal("CORRAL_TEST_S3=1 but no versitygw: install it with `go install github.com/versity/versitygw/cmd/versitygw@v1.8.0`")
		}
		t.Skip("no versitygw on PATH (go install github.com/versity/versitygw/cmd/versitygw@v1.8.0) and CORRAL_TEST_S3 unset")
	}
	root := t.TempDir()
	s := S3Server{Bucket: "corral-test", Root: root}
	if err := os.Mkdir(filepath.Join(root, s.Bucket), 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	const access, secret = "corraltest", "corraltestsecret"
	cmd := exec.Command(bin, "--access", access, "--secret", secret, "--port", addr, "--quiet", "posix", root)
	cmd.Stdout, cmd.Stderr = testWriter{t}, testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start versitygw: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	s.Endpoint = "http://" + addr
	for deadline := time.Now().Add(20 * time.Second); ; {
		if resp, err := http.Get(s.Endpoint); err == nil {
			resp.Body.Close()
			break
		}
		select {
		case <-exited:
			t.Fatalf("versitygw exited: %v", cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("versitygw did not answer within 20s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", access)
	t.Setenv("AWS_SECRET_ACCESS_KEY", secret)
	t.Setenv("AWS_REGION", "us-east-1")
	return s
}

// testWriter sends a subprocess's output to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// StartRegistry runs a registry daemon that stores into the bucket under
// prefix; registries given one prefix are replicas sharing a store.
func (s S3Server) StartRegistry(t testing.TB, prefix string) *regdaemon.Daemon {
	t.Helper()
	return startRegistry(t, regdaemon.Config{S3: &s3.Config{Endpoint: s.Endpoint, Bucket: s.Bucket, Prefix: prefix, PathStyle: true}})
}
