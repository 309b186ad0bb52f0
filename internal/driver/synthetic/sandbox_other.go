//go:build !linux

package synthetic

import (
	"os/exec"
	"syscall"
)

func confine(cmd *exec.Cmd, uid, gid uint32) {
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}},
		Setsid:     true,
	}
}
