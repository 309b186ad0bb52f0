// Package sshserve is the SSH server of guests that are not real machines:
// synthetic instances and the fake tart's VMs. Each exec or shell request
// runs a command the caller builds (in its sandbox), with the session's
// stdin, stdout, stderr and exit status.
package sshserve

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os/exec"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Config says who may log in and how commands run.
type Config struct {
	User, Password string          // password login ("" password: none)
	AuthorizedKeys []ssh.PublicKey // key login for User
	// Command builds the process for a request: an exec's command line, or
	// "" for a shell.
	Command func(cmdline string) (*exec.Cmd, error)
}

// Server serves SSH on a listener until Close.
type Server struct {
	ln   net.Listener
	cfg  *ssh.ServerConfig
	cmd  func(string) (*exec.Cmd, error)
	mu   sync.Mutex
	conn map[net.Conn]bool
	wg   sync.WaitGroup
}

// NewHostKey makes a fresh host key.
func NewHostKey() (ssh.Signer, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return ssh.NewSignerFromKey(key)
}

// Serve starts serving ln with hostKey.
func Serve(ln net.Listener, hostKey ssh.Signer, c Config) *Server {
	cfg := &ssh.ServerConfig{}
	if c.Password != "" {
		cfg.PasswordCallback = func(m ssh.ConnMetadata, p []byte) (*ssh.Permissions, error) {
			if m.User() == c.User && subtle.ConstantTimeCompare(p, []byte(c.Password)) == 1 {
				return nil, nil
			}
			return nil, errors.New("permission denied")
		}
	}
	if len(c.AuthorizedKeys) > 0 {
		cfg.PublicKeyCallback = func(m ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
			for _, a := range c.AuthorizedKeys {
				if m.User() == c.User && subtle.ConstantTimeCompare(a.Marshal(), k.Marshal()) == 1 {
					return nil, nil
				}
			}
			return nil, errors.New("permission denied")
		}
	}
	cfg.AddHostKey(hostKey)
	s := &Server{ln: ln, cfg: cfg, cmd: c.Command, conn: map[net.Conn]bool{}}
	s.wg.Add(1)
	go s.serve()
	return s
}

// Close stops listening and drops every connection.
func (s *Server) Close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conn {
		c.Close()
	}
	s.conn = nil
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *Server) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.conn == nil {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conn[c] = true
		s.mu.Unlock()
		go s.handle(c)
	}
}

func (s *Server) handle(c net.Conn) {
	defer func() {
		c.Close()
		s.mu.Lock()
		if s.conn != nil {
			delete(s.conn, c)
		}
		s.mu.Unlock()
	}()
	c.SetDeadline(time.Now().Add(30 * time.Second)) // the handshake
	_, chans, reqs, err := ssh.NewServerConn(c, s.cfg)
	if err != nil {
		return
	}
	c.SetDeadline(time.Time{})
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.UnknownChannelType, "only sessions")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			continue
		}
		go s.session(ch, creqs)
	}
}

func (s *Server) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	var cmd *exec.Cmd
	for req := range reqs {
		switch req.Type {
		case "exec", "shell":
			if cmd != nil {
				req.Reply(false, nil)
				continue
			}
			line := ""
			if req.Type == "exec" {
				var p struct{ Command string }
				if ssh.Unmarshal(req.Payload, &p) != nil {
					req.Reply(false, nil)
					continue
				}
				line = p.Command
			}
			c, err := s.cmd(line)
			if err != nil {
				req.Reply(false, nil)
				continue
			}
			c.Stdout, c.Stderr = ch, ch.Stderr()
			stdin, err := c.StdinPipe()
			if err == nil {
				err = c.Start()
			}
			if err != nil {
				req.Reply(false, nil)
				continue
			}
			cmd = c
			req.Reply(true, nil)
			go func() { io.Copy(stdin, ch); stdin.Close() }()
			go func() {
				code := 0
				if err := c.Wait(); err != nil {
					var ee *exec.ExitError
					code = 255
					if errors.As(err, &ee) && ee.ExitCode() >= 0 {
						code = ee.ExitCode()
					}
				}
				b := make([]byte, 4)
				binary.BigEndian.PutUint32(b, uint32(code))
				ch.SendRequest("exit-status", false, b)
				ch.Close()
			}()
		case "signal":
			if cmd != nil && cmd.Process != nil {
				cmd.Process.Kill()
			}
		case "env", "pty-req", "window-change":
			req.Reply(true, nil)
		default:
			req.Reply(false, nil)
		}
	}
	if cmd != nil && cmd.Process != nil && cmd.ProcessState == nil {
		cmd.Process.Kill()
	}
}
