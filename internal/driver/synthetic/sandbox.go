package synthetic

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
)

// DefaultScriptUser runs synthetic startup scripts when the node runs as
// root: a script is whatever any caller of POST /api/v1/vm sent, so it never
// runs as root unless an operator asks for that by name.
const DefaultScriptUser = "nobody"

// scriptEnv is the whole environment of a script: nothing of the node's.
func scriptEnv(dir string, v *vm) []string {
	return []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + dir, "TMPDIR=" + dir, "LANG=C.UTF-8",
		"CORRAL_INSTANCE_ID=" + v.spec.InstanceID, "CORRAL_VMID=" + v.spec.VMID}
}

// scriptIdentity resolves who runs scripts: name (a user name or a numeric
// uid), used only when the node runs as root; "root" means root.
func scriptIdentity(name string) (uid, gid uint32, switchUser bool, err error) {
	if os.Geteuid() != 0 || name == "root" {
		return 0, 0, false, nil
	}
	if name == "" {
		name = DefaultScriptUser
	}
	if u, lerr := user.Lookup(name); lerr == nil {
		uid64, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid64, _ := strconv.ParseUint(u.Gid, 10, 32)
		return uint32(uid64), uint32(gid64), true, nil
	}
	if n, perr := strconv.ParseUint(name, 10, 32); perr == nil {
		return uint32(n), uint32(n), true, nil
	}
	if name == DefaultScriptUser { // a minimal image without /etc/passwd
		return 65534, 65534, true, nil
	}
	return 0, 0, false, fmt.Errorf("synthetic driver: script user %q does not exist", name)
}

// prepareScript makes dir the script's own and confines the command: the
// script user, a cleared environment, and (Linux, as root) its own mount,
// PID, IPC and UTS namespaces.
func (d *Driver) prepareScript(cmd *exec.Cmd, dir string, v *vm) error {
	cmd.Dir = dir
	cmd.Env = scriptEnv(dir, v)
	uid, gid, switchUser, err := scriptIdentity(d.ScriptUser)
	if err != nil {
		return err
	}
	if !switchUser {
		return nil
	}
	if err := os.Chown(dir, int(uid), int(gid)); err != nil {
		return fmt.Errorf("startup script: give its directory to uid %d: %w", uid, err)
	}
	confine(cmd, uid, gid)
	return nil
}
