//go:build !linux

package synthetic

import (
	"context"
	"os/exec"
	"syscall"
)

func confine(cmd *exec.Cmd, uid, gid uint32) {
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}},
		Setsid:     true,
	}
}

type sandbox struct{}

type limits struct {
	Pids   int
	Memory int64
}

func (d *Driver) newSandbox(home string, uid, gid uint32, lim limits) (*sandbox, error) {
	return nil, nil
}

func (sb *sandbox) command(ctx context.Context, argv ...string) *exec.Cmd { return nil }

func (sb *sandbox) homeInside() string { return "" }

func (sb *sandbox) close() {}

func sandboxSupported() bool { return false }
