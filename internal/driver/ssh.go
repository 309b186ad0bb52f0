package driver

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"golang.org/x/crypto/ssh"
)

// NodeKey loads (or creates) the node's SSH key, injected into guests so the
// node can run startup scripts in them.
func NodeKey(dir string) (ssh.Signer, error) {
	path := filepath.Join(dir, "id_ed25519")
	if data, err := os.ReadFile(path); err == nil {
		return ssh.ParsePrivateKey(data)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, "corral node")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, fmt.Errorf("save node ssh key: %w", err)
	}
	return ssh.NewSignerFromKey(priv)
}

// DialGuest connects as user with the given methods, retrying until ctx
// ends: a port forward or a booting guest accepts before its sshd runs, so
// only a completed handshake means "up".
func DialGuest(ctx context.Context, addr, user string, auth ...ssh.AuthMethod) (*ssh.Client, error) {
	cfg := &ssh.ClientConfig{User: user, Auth: auth,
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), // a fresh guest's host key is new every time
		Timeout:         5 * time.Second}
	var last error
	for {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			c, chans, reqs, herr := ssh.NewClientConn(conn, addr, cfg)
			if herr == nil {
				conn.SetDeadline(time.Time{})
				return ssh.NewClient(c, chans, reqs), nil
			}
			conn.Close()
			err = herr
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("guest SSH at %s: %w (last error: %v)", addr, ctx.Err(), last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// RunSSHScript runs script with /bin/sh in the guest; ctx carries the timeout.
func RunSSHScript(ctx context.Context, client *ssh.Client, script []byte) (apiv1.ScriptResult, error) {
	sess, err := client.NewSession()
	if err != nil {
		return apiv1.ScriptResult{}, fmt.Errorf("ssh session: %w", err)
	}
	defer sess.Close()
	// Locked: on a timeout the output is read while the session's copiers
	// may still write.
	var stdout, stderr syncBuffer
	sess.Stdin, sess.Stdout, sess.Stderr = bytes.NewReader(script), &stdout, &stderr
	done := make(chan error, 1)
	go func() { done <- sess.Run("/bin/sh -s") }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = sess.Signal(ssh.SIGKILL)
		sess.Close()
		return apiv1.ScriptResult{ReturnCode: -1, DidTimeout: true, Stdout: stdout.String(), Stderr: stderr.String()}, nil
	}
	res := apiv1.ScriptResult{Stdout: stdout.String(), Stderr: stderr.String()}
	var exit *ssh.ExitError
	switch {
	case errors.As(err, &exit):
		res.ReturnCode = exit.ExitStatus()
	case err != nil:
		return res, fmt.Errorf("startup script over ssh: %w", err)
	}
	return res, nil
}

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
