package faketart

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sync"

	"golang.org/x/crypto/ssh"
)

// guestSSH is the fake guest's sshd: password login as the image's user,
// each exec or shell request run with /bin/sh on this host in dir.
type guestSSH struct {
	ln  net.Listener
	cfg *ssh.ServerConfig
	dir string
	wg  sync.WaitGroup
}

func startSSH(ip, dir string) (*guestSSH, error) {
	port := os.Getenv("FAKE_TART_SSH_PORT")
	if port == "" {
		port = "22"
	}
	user, pass := os.Getenv("FAKE_TART_USER"), os.Getenv("FAKE_TART_PASSWORD")
	if user == "" {
		user = "admin"
	}
	if pass == "" {
		pass = "admin"
	}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	signer, err := ssh.NewSignerFromKey(key)
	if err != nil {
		return nil, err
	}
	cfg := &ssh.ServerConfig{PasswordCallback: func(m ssh.ConnMetadata, p []byte) (*ssh.Permissions, error) {
		if m.User() == user && string(p) == pass {
			return nil, nil
		}
		return nil, errors.New("permission denied")
	}}
	cfg.AddHostKey(signer)
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, port))
	if err != nil {
		return nil, err
	}
	s := &guestSSH{ln: ln, cfg: cfg, dir: dir}
	go s.serve()
	return s, nil
}

func (s *guestSSH) Close() { s.ln.Close() }

func (s *guestSSH) serve() {
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		go s.handle(conn)
	}
}

func (s *guestSSH) handle(conn net.Conn) {
	_, chans, reqs, err := ssh.NewServerConn(conn, s.cfg)
	if err != nil {
		conn.Close()
		return
	}
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

func (s *guestSSH) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	var cmd *exec.Cmd
	for req := range reqs {
		switch req.Type {
		case "exec", "shell":
			if cmd != nil {
				req.Reply(false, nil)
				continue
			}
			args := []string{"/bin/sh"}
			if req.Type == "exec" {
				var p struct{ Command string }
				if ssh.Unmarshal(req.Payload, &p) != nil {
					req.Reply(false, nil)
					continue
				}
				args = append(args, "-c", p.Command)
			}
			cmd = exec.Command(args[0], args[1:]...)
			cmd.Dir, cmd.Stdout, cmd.Stderr = s.dir, ch, ch.Stderr()
			stdin, _ := cmd.StdinPipe()
			if err := cmd.Start(); err != nil {
				req.Reply(false, nil)
				return
			}
			req.Reply(true, nil)
			go func() { io.Copy(stdin, ch); stdin.Close() }()
			go func() {
				code := 0
				if err := cmd.Wait(); err != nil {
					var ee *exec.ExitError
					if errors.As(err, &ee) {
						code = ee.ExitCode()
					} else {
						code = 255
					}
					if code < 0 {
						code = 255
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
		case "env", "pty-req":
			req.Reply(true, nil)
		default:
			req.Reply(false, fmt.Appendf(nil, "unsupported %s", req.Type))
		}
	}
}
