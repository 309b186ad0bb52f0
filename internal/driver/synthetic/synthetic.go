// Package synthetic is a VM driver with no hypervisor: an instance is a
// goroutine that "boots" for a configured time and serves a real loopback TCP
// port as its SSH endpoint. Startup scripts run with /bin/sh on the node.
// It lets every scheduling and API test, and large simulations, run anywhere.
package synthetic

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/driver"
	"github.com/corral-build/corral/internal/driver/sshserve"
	"golang.org/x/crypto/ssh"
)

// Driver is the synthetic driver.
type Driver struct {
	BootTime   time.Duration
	ListenHost string // where SSH endpoints listen; 127.0.0.1 by default
	// ScriptUser runs startup scripts and SSH sessions when the node runs as
	// root (default DefaultScriptUser; "root" only when an operator says so).
	ScriptUser string
	// SSHUser and SSHPassword log in to instances' SSH endpoints (default
	// anka/admin, as the reference's guests); AuthorizedKeys too.
	SSHUser, SSHPassword string
	AuthorizedKeys       []ssh.PublicKey
	// StateDir holds instances' sandboxes (default: the system temporary
	// directory; a container image may have none).
	StateDir string
	// Hide lists paths a VM sees empty (Linux, node as root): the node's
	// data dir, the cloud's. StateDir is always hidden but for the VM's
	// own home.
	Hide []string
	// HostNetwork gives VMs the node's network (Linux, node as root);
	// otherwise each has a loopback of its own and no route anywhere.
	HostNetwork bool
	// MaxProcesses bounds a VM's processes (cgroup pids; default
	// DefaultMaxProcesses); its memory is bounded by its RAM (vram, 4 GiB
	// by default), its /tmp and /var/tmp included (1 GiB each at most).
	MaxProcesses int

	keyOnce sync.Once
	hostKey ssh.Signer
	keyErr  error
}

// DefaultMaxProcesses bounds one VM's processes.
const DefaultMaxProcesses = 4096

// New returns a synthetic driver whose VMs boot in bootTime.
func New(bootTime time.Duration) *Driver { return &Driver{BootTime: bootTime, ListenHost: "127.0.0.1"} }

func (d *Driver) Name() string { return "synthetic" }

// Start "boots" for BootTime and opens the SSH endpoint.
func (d *Driver) Start(ctx context.Context, spec driver.Spec) (driver.VM, error) {
	select {
	case <-time.After(d.BootTime):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	ln, err := listen(d.ListenHost)
	if err != nil {
		return nil, fmt.Errorf("synthetic vm %s: ssh endpoint: %w", spec.InstanceID, err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	d.keyOnce.Do(func() { d.hostKey, d.keyErr = sshserve.NewHostKey() })
	if d.keyErr != nil {
		ln.Close()
		return nil, d.keyErr
	}
	home, sb, err := d.machine(spec)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("synthetic vm %s: %w", spec.InstanceID, err)
	}
	now := time.Now().UTC()
	cpus, ram := spec.VCPU, spec.VRAMMB
	if cpus == 0 {
		cpus = 2
	}
	if ram == 0 {
		ram = 4096
	}
	vm := &vm{d: d, done: make(chan struct{}), spec: spec, home: home, sb: sb, info: apiv1.VMInfo{
		UUID: spec.InstanceID, Name: "synthetic-" + spec.InstanceID[:min(8, len(spec.InstanceID))],
		Status: "running", CPUCores: cpus, RAM: strconv.Itoa(ram/1024) + "G", NodeID: spec.NodeID,
		HostIP: spec.HostIP, IP: fakeGuestIP(port), CreationDate: now, StartDate: now, Version: spec.Tag,
		PortForwarding: []apiv1.PortForwarding{{GuestPort: 22, HostPort: port, Protocol: "tcp", Name: "ssh"}},
		Accelerator:    "synthetic",
	}}
	vm.serve(ln)
	return vm, nil
}

// fakeGuestIP gives each VM a distinct private address, as a NAT'd guest has.
func fakeGuestIP(port int) string { return fmt.Sprintf("192.168.%d.%d", 64+port/250%64, 2+port%250) }

type vm struct {
	d    *Driver
	spec driver.Spec
	home string   // the VM's home: scripts and SSH sessions run there
	sb   *sandbox // the VM's namespaces (nil: the node is not root on Linux)
	srv  *sshserve.Server
	done chan struct{}

	mu      sync.Mutex
	info    apiv1.VMInfo
	err     error
	stopped bool
}

// serve runs the instance's SSH server: logins as the template's user
// (SSHUser/SSHPassword or a listed key), each session a command in the
// instance's sandbox (its own home directory, the script user, confined as
// startup scripts are).
func (v *vm) serve(ln net.Listener) {
	user, pass := cmp.Or(v.d.SSHUser, "anka"), cmp.Or(v.d.SSHPassword, "admin")
	v.srv = sshserve.Serve(ln, v.d.hostKey, sshserve.Config{User: user, Password: pass, AuthorizedKeys: v.d.AuthorizedKeys,
		Command: func(line string) (*exec.Cmd, error) {
			args := []string{scriptShell()}
			if line != "" {
				args = append(args, "-c", line)
			}
			return v.command(context.Background(), args...)
		}})
}

func (v *vm) Info() apiv1.VMInfo {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.info
}

// scriptShell is bash when the node has it (macOS guests run scripts with
// bash; CI scripts use `set -o pipefail`, which dash refuses), else /bin/sh.
func scriptShell() string {
	if p, err := exec.LookPath("bash"); err == nil {
		return p
	}
	return "/bin/sh"
}

// RunScript runs the script with bash (or /bin/sh) in the VM: in its home,
// with nothing of the node's environment; when the node runs as root, as
// Driver.ScriptUser (default nobody) inside the VM's sandbox.
func (v *vm) RunScript(ctx context.Context, script []byte) (apiv1.ScriptResult, error) {
	cmd, err := v.command(ctx, scriptShell(), "-s")
	if err != nil {
		return apiv1.ScriptResult{}, fmt.Errorf("startup script: %w", err)
	}
	return driver.RunScript(ctx, cmd, script)
}

// command is argv as the VM runs it: in its sandbox when it has one.
func (v *vm) command(ctx context.Context, argv ...string) (*exec.Cmd, error) {
	v.mu.Lock()
	stopped := v.stopped
	v.mu.Unlock()
	if stopped {
		return nil, fmt.Errorf("synthetic vm %s is stopped", v.spec.InstanceID)
	}
	if v.sb != nil {
		cmd := v.sb.command(ctx, argv...)
		cmd.Env = scriptEnv(v.sb.homeInside(), v)
		return cmd, nil
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	return cmd, v.d.prepareScript(cmd, v.home, v)
}

// machine makes a VM's home and, where the node can, its sandbox.
func (d *Driver) machine(spec driver.Spec) (string, *sandbox, error) {
	base := cmp.Or(d.StateDir, os.TempDir())
	if err := os.MkdirAll(base, 0o755); err != nil {
		return "", nil, err
	}
	home, err := os.MkdirTemp(base, "corral-vm-")
	if err != nil {
		return "", nil, err
	}
	uid, gid, switchUser, err := scriptIdentity(d.ScriptUser)
	if err == nil && switchUser {
		err = os.Chown(home, int(uid), int(gid))
	}
	var sb *sandbox
	if err == nil && sandboxSupported() {
		mem := int64(cmp.Or(spec.VRAMMB, 4096)) << 20
		sb, err = d.newSandbox(home, uid, gid, limits{Pids: cmp.Or(d.MaxProcesses, DefaultMaxProcesses), Memory: mem})
	}
	if err != nil {
		os.RemoveAll(home)
		return "", nil, err
	}
	return home, sb, nil
}

// hidden is what VMs see empty: Hide and StateDir, absolute.
func (d *Driver) hidden() []string {
	var out []string
	for _, p := range append(slices.Clone(d.Hide), d.StateDir) {
		if p == "" {
			continue
		}
		if abs, err := filepath.Abs(p); err == nil && abs != "/" {
			out = append(out, abs)
		}
	}
	return out
}

func (v *vm) Stop(context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.stopped {
		v.stopped = true
		v.srv.Close()
		v.info.Status, v.info.StopDate = "stopped", time.Now().UTC()
	}
	return nil
}

// Destroy ends every process of the VM (its sandbox) and deletes its home.
func (v *vm) Destroy(ctx context.Context) error {
	err := v.Stop(ctx)
	if v.sb != nil {
		v.sb.close()
	}
	if rerr := os.RemoveAll(v.home); err == nil {
		err = rerr
	}
	return err
}

func (v *vm) Done() <-chan struct{} { return v.done }

// Console is the synthetic VM's boot log: what a guest's serial console
// would show, so console plumbing is exercised without a hypervisor.
func (v *vm) Console(limit int) string {
	v.mu.Lock()
	info := v.info
	v.mu.Unlock()
	log := fmt.Sprintf("synthetic console: booting %s tag %s\nsynthetic console: %d vCPU, %s RAM\nsynthetic console: sshd listening on port %d\n%s login:\n",
		v.spec.TemplateName, v.spec.Tag, info.CPUCores, info.RAM, info.PortForwarding[0].HostPort, info.Name)
	return log[max(0, len(log)-limit):]
}

func (v *vm) Err() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.err
}

// Crash makes the VM exit on its own, for tests of the node's handling.
func (v *vm) Crash(reason error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	select {
	case <-v.done:
		return
	default:
	}
	v.err = reason
	v.stopped = true
	v.srv.Close()
	v.info.Status, v.info.StopDate = "stopped", time.Now().UTC()
	close(v.done)
}

// Save stops the VM and writes the template it ran from plus a file that
// records the save, so tests can tell the new tag from the old.
func (v *vm) Save(ctx context.Context, dir string, suspend bool) (string, error) {
	_ = v.Stop(ctx)
	if v.spec.TemplateDir != "" {
		// Files written below are left out: a copy may be a hard link.
		if err := driver.CopyTemplateFiles(v.spec.TemplateDir, dir, "saved.img", "suspend.state"); err != nil {
			return "", err
		}
	} else if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"name":"`+v.spec.TemplateName+`"}`), 0o644); err != nil {
		return "", err
	}
	record := fmt.Sprintf("synthetic VM %s saved from %s tag %s\n", v.spec.InstanceID, v.spec.VMID, v.spec.Tag)
	if err := os.WriteFile(filepath.Join(dir, "saved.img"), []byte(record), 0o644); err != nil {
		return "", err
	}
	if suspend {
		return "", os.WriteFile(filepath.Join(dir, "suspend.state"), []byte(record), 0o644)
	}
	return "", nil
}
