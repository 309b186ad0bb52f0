package synthetic

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func confine(cmd *exec.Cmd, uid, gid uint32) {
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}},
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS,
		Setsid:     true,
		Pdeathsig:  syscall.SIGKILL,
	}
}

// sandbox is one synthetic VM's machine: an init process (PID 1 of its own
// PID namespace) holding a mount, network, IPC and UTS namespace of its
// own, which every startup script and SSH session of the VM enters. Inside,
// /proc shows only the VM's processes; /tmp, /var/tmp and /dev/shm are the
// VM's own; the paths the node hides (its data dir, the cloud's) are empty;
// the VM's home is the one directory it shares with the host; the network
// is a loopback of its own (no route to the host's ports) unless the
// operator gave the VM the host's. Killing init ends every process of the
// VM: the kernel kills a PID namespace with its first process.
type sandbox struct {
	init     *exec.Cmd
	pid      int
	home     string // where the VM sees its home
	uid, gid uint32
	hostNet  bool
	exited   chan struct{}
	cg       *cgroup // nil: the node has no cgroups
}

// sandboxTools are what a sandbox needs on the node (util-linux).
var sandboxTools = []string{"nsenter", "setpriv", "mount", "mkdir"}

var warnNoSandbox sync.Once

// sandboxMissing names what the node lacks for VM sandboxes ("" when it
// has all): a shell and util-linux. A node image without them (Corral's
// own container image is from scratch) runs jobs confined as before (the
// script user, a cleared environment, their own directory), with a
// warning: the synthetic driver is for tests and demos.
func sandboxMissing() string {
	if _, err := os.Stat("/bin/sh"); err != nil {
		return "/bin/sh"
	}
	for _, tool := range sandboxTools {
		if _, err := exec.LookPath(tool); err != nil {
			return tool
		}
	}
	return ""
}

func sandboxSupported() bool {
	if os.Geteuid() != 0 {
		return false
	}
	if missing := sandboxMissing(); missing != "" {
		warnNoSandbox.Do(func() {
			slog.Warn("synthetic driver: no VM sandbox on this node (it needs /bin/sh and util-linux: nsenter, setpriv, mount); "+
				"jobs run as the script user with their own directory but share the node's network, /proc and files", "missing", missing)
		})
		return false
	}
	return true
}

// sandboxSetup runs as root in the new namespaces, then stays as PID 1.
// $1: the VM's home on the host; $2: where the VM sees it; $3...: paths to
// hide. /home and /run are hidden too (users' files, the host's sockets: a
// container engine's is root). The home is held on a mount of its own
// before anything is hidden, then moved into place.
const sandboxSetup = `set -e
read -r go_ahead
real=$1; home=$2; shift 2
mount --make-rprivate /
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t tmpfs -o mode=0755,size=64k,nosuid,nodev corral-hidden /run
mkdir /run/corral-home
mount --bind "$real" /run/corral-home
for p in "$@" /home; do
	if [ -d "$p" ]; then mount -t tmpfs -o mode=0755,size=64k,nosuid,nodev,noexec corral-hidden "$p"; fi
done
for p in /tmp:1g /var/tmp:1g /dev/shm:64m; do
	if [ -d "${p%:*}" ]; then mount -t tmpfs -o "mode=1777,nosuid,nodev,size=${p#*:}" corral-private "${p%:*}"; fi
done
mkdir -p "$home"
mount --move /run/corral-home "$home"
cd "$home"
if command -v ip >/dev/null 2>&1; then ip link set lo up 2>/dev/null || true; fi
echo ready
exec 1>/dev/null 2>&1 </dev/null
trap '' HUP INT TERM
while :; do sleep 86400 & wait $! || true; done
`

// newSandbox starts a VM's sandbox: only when the node runs as root on
// Linux and the sandbox tools are there (else scripts run as before:
// cleared environment, the script user, their own directory).
func (d *Driver) newSandbox(home string, uid, gid uint32, lim limits) (*sandbox, error) {
	flags := syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS
	if !d.HostNetwork {
		flags |= syscall.CLONE_NEWNET
	}
	// The VM sees its home at /home/<name> (/tmp/<name> without /home):
	// a path whose parents it can walk, wherever the node keeps it.
	inside := "/tmp/" + filepath.Base(home)
	if fi, err := os.Stat("/home"); err == nil && fi.IsDir() {
		inside = "/home/" + filepath.Base(home)
	}
	cmd := exec.Command("/bin/sh", append([]string{"-c", sandboxSetup, "corral-vm-init", home, inside}, d.hidden()...)...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: uintptr(flags), Setsid: true, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	goAhead, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("synthetic vm sandbox: %w", err)
	}
	sb := &sandbox{init: cmd, pid: cmd.Process.Pid, home: inside, uid: uid, gid: gid, hostNet: d.HostNetwork, exited: make(chan struct{})}
	// Into the VM's cgroup before it does anything (it waits for the go
	// ahead): every process of the VM is counted there. A node without
	// cgroups runs VMs without these limits.
	if cg, err := newCgroup(filepath.Base(home), lim); err == nil {
		if err := cg.add(sb.pid); err != nil {
			cg.remove()
		} else {
			sb.cg = cg
		}
	}
	_, _ = goAhead.Write([]byte("go\n"))
	goAhead.Close()
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("unexpected %q", line)
		}
		ready <- err
	}()
	go func() { _ = cmd.Wait(); close(sb.exited) }()
	select {
	case err = <-ready:
	case <-time.After(30 * time.Second):
		err = fmt.Errorf("not ready after 30s")
	}
	if err != nil {
		sb.close()
		return nil, fmt.Errorf("synthetic vm sandbox setup failed: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return sb, nil
}

// command runs argv inside the sandbox as its user, in dir, with no
// capabilities and no way to gain privileges (setuid binaries included);
// it dies with the caller (ctx cancel kills nsenter, and its child then).
func (sb *sandbox) command(ctx context.Context, argv ...string) *exec.Cmd {
	args := []string{"--target", strconv.Itoa(sb.pid), "--mount", "--pid", "--ipc", "--uts", "--wd"} // init's: the VM's home
	if !sb.hostNet {
		args = append(args, "--net")
	}
	args = append(args, "--", "setpriv", "--reuid", strconv.Itoa(int(sb.uid)), "--regid", strconv.Itoa(int(sb.gid)),
		"--clear-groups", "--no-new-privs", "--pdeathsig=KILL")
	if sb.uid != 0 { // root only where the operator named it: then with its capabilities
		args = append(args, "--inh-caps=-all", "--bounding-set=-all")
	}
	full := append(append(append([]string{"nsenter"}, args...), "--"), argv...)
	if sb.cg != nil {
		// Entering namespaces does not enter a cgroup: the shell joins
		// the VM's first, then becomes nsenter, and all it starts is
		// counted there.
		join := ""
		for _, d := range sb.cg.dirs {
			join += fmt.Sprintf("echo $$ > '%s/cgroup.procs' || exit 125; ", d)
		}
		full = append([]string{"/bin/sh", "-c", join + `exec "$@"`, "corral-vm-join"}, full...)
	}
	cmd := exec.CommandContext(ctx, full[0], full[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	return cmd
}

// close ends every process of the VM.
func (sb *sandbox) close() {
	_ = sb.init.Process.Kill()
	<-sb.exited
	if sb.cg != nil {
		sb.cg.remove()
	}
}

// homeInside is where the VM sees its home.
func (sb *sandbox) homeInside() string { return sb.home }
