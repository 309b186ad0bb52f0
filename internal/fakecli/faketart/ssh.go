package faketart

import (
	"errors"
	"net"
	"os"
	"os/exec"

	"github.com/corral-build/corral/internal/driver/sshserve"
)

// startSSH serves the fake guest's sshd on ip: password login as the
// image's user, commands run with /bin/sh on this host in dir.
func startSSH(ip, dir string) (*sshserve.Server, error) {
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
	key, err := sshserve.NewHostKey()
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, port))
	if err != nil {
		return nil, err
	}
	return sshserve.Serve(ln, key, sshserve.Config{User: user, Password: pass,
		Command: func(line string) (*exec.Cmd, error) {
			if ip == "" {
				return nil, errors.New("no guest")
			}
			args := []string{"/bin/sh"}
			if line != "" {
				args = append(args, "-c", line)
			}
			c := exec.Command(args[0], args[1:]...)
			c.Dir = dir
			return c, nil
		}}), nil
}
