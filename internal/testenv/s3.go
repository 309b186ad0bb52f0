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
// $CORRAL_TEST_VERSITYGW or versitygw on PATH (see Binary; CORRAL_TEST_S3=1
// makes its absence a failure).
func StartS3(t testing.TB) S3Server {
	t.Helper()
	bin := Binary(t, "versitygw", "CORRAL_TEST_VERSITYGW", "CORRAL_TEST_S3",
		"go install github.com/versity/versitygw/cmd/versitygw@v1.8.0")
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
type testWriter struct{ t testing.TB }

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

// Binary finds a program a test needs: $pathEnv, else name on PATH. Without
// it the test is skipped, unless $requiredEnv=1 (set by .ci/run, which
// installs it) makes that a failure. install says how to get it.
func Binary(t testing.TB, name, pathEnv, requiredEnv, install string) string {
	t.Helper()
	bin := os.Getenv(pathEnv)
	if bin == "" {
		bin, _ = exec.LookPath(name)
	}
	if bin == "" {
		if os.Getenv(requiredEnv) == "1" {
			t.Fatalf("%s=1 but no %s ($%s or PATH): %s", requiredEnv, name, pathEnv, install)
		}
		t.Skipf("no %s ($%s or PATH; %s); set %s=1 to make this a failure", name, pathEnv, install, requiredEnv)
	}
	return bin
}
