// Package qemu runs instances as QEMU virtual machines on Linux nodes. An
// instance's disk is a copy-on-write overlay of the template's (starting one
// costs milliseconds and almost no space); KVM is used when it works, TCG
// software emulation otherwise. Guests get user-mode networking with a host
// port forwarded to guest port 22, and the node's SSH key (kernel command
// line, SMBIOS systemd credential and fw_cfg), so startup scripts run over SSH.
package qemu

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/driver"
	"golang.org/x/crypto/ssh"
)

// Config tunes the driver.
type Config struct {
	StateDir    string        // instance overlays, sockets, logs and the node's SSH key
	ForwardHost string        // address the SSH forward listens on ("0.0.0.0" default)
	VNC         bool          // give each guest a VNC display on 127.0.0.1
	BootTimeout time.Duration // until the guest answers SSH (default 5m)
	Accel       string        // auto (default: KVM only if a probe guest runs), kvm or tcg
	Binary      string        // qemu-system-x86_64
	ImgBinary   string        // qemu-img
	Log         *slog.Logger
}

// Driver is the QEMU driver.
type Driver struct {
	cfg Config
	key ssh.Signer

	mu       sync.Mutex
	accel    string // kvm or tcg, probed at New
	kvmBroke bool   // KVM failed to run a guest after all: use TCG from now on
}

// New prepares the driver; it fails if QEMU is not installed.
func New(cfg Config) (*Driver, error) {
	if cfg.Binary == "" {
		cfg.Binary = "qemu-system-x86_64"
	}
	if cfg.ImgBinary == "" {
		cfg.ImgBinary = "qemu-img"
	}
	if cfg.ForwardHost == "" {
		cfg.ForwardHost = "0.0.0.0"
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 5 * time.Minute
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	for _, bin := range []string{cfg.Binary, cfg.ImgBinary} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("qemu driver: %s not found (install qemu-system-x86 and qemu-utils)", bin)
		}
	}
	key, err := driver.NodeKey(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("qemu driver: %w", err)
	}
	accel, why, err := chooseAccel(context.Background(), cfg.Binary, cfg.StateDir, cfg.Accel)
	if err != nil {
		return nil, err
	}
	cfg.Log.Info("qemu accelerator", "accel", accel, "reason", why)
	d := &Driver{cfg: cfg, key: key, accel: accel}
	d.cleanOrphans()
	return d, nil
}

func (d *Driver) Name() string { return "qemu" }

// Accelerator is what the next guest will use: kvm when the probe at New ran
// a guest under KVM and no guest has failed under it since, else tcg.
func (d *Driver) Accelerator() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.kvmBroke {
		return AccelTCG
	}
	return d.accel
}

// cleanOrphans kills guests left by a previous node process and removes their
// state: the node re-creates whatever the controller still wants.
func (d *Driver) cleanOrphans() {
	dirs, _ := filepath.Glob(filepath.Join(d.cfg.StateDir, "instances", "*"))
	for _, dir := range dirs {
		if data, err := os.ReadFile(filepath.Join(dir, "qemu.pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil {
				if p, err := os.FindProcess(pid); err == nil {
					_ = p.Kill()
				}
			}
		}
		os.RemoveAll(dir)
		d.cfg.Log.Info("removed guest left by an earlier node process", "dir", dir)
	}
}

// Start creates the overlay, boots the guest and waits until SSH answers.
func (d *Driver) Start(ctx context.Context, spec driver.Spec) (driver.VM, error) {
	tmpl, err := loadTemplate(spec.TemplateDir)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(d.cfg.StateDir, "instances", spec.InstanceID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	vm := &vm{d: d, dir: dir, templateDir: spec.TemplateDir, tmpl: tmpl, done: make(chan struct{})}
	if err := vm.boot(ctx, spec, tmpl); err != nil {
		vm.mu.Lock()
		vm.stopped = true
		vm.mu.Unlock()
		if vm.cmd != nil {
			_ = vm.cmd.Process.Kill()
		}
		vm.kill()
		os.RemoveAll(dir)
		return nil, err
	}
	return vm, nil
}

type vm struct {
	d           *Driver
	dir         string
	templateDir string
	tmpl        TemplateConfig
	cmd         *exec.Cmd
	ssh         *ssh.Client
	done        chan struct{} // closed when the guest exits on its own
	exited      chan struct{} // closed whenever the QEMU process has exited

	mu      sync.Mutex
	info    apiv1.VMInfo
	exitErr error
	stopped bool // we asked it to stop: not a crash
}

func (v *vm) boot(ctx context.Context, spec driver.Spec, tmpl TemplateConfig) error {
	d := v.d
	cpus, ram := firstNonZero(spec.VCPU, tmpl.CPU, 1), firstNonZero(spec.VRAMMB, tmpl.RAMMB, 512)
	sshPort, err := freePort(d.cfg.ForwardHost)
	if err != nil {
		return err
	}
	authorized := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(d.key.PublicKey())))
	args := []string{
		"-name", "corral-" + spec.InstanceID, "-m", strconv.Itoa(ram), "-smp", strconv.Itoa(cpus),
		"-display", "none", "-no-reboot", "-pidfile", filepath.Join(v.dir, "qemu.pid"),
		"-serial", "file:" + filepath.Join(v.dir, "console.log"),
		"-qmp", "unix:" + filepath.Join(v.dir, "qmp.sock") + ",server=on,wait=off",
		"-netdev", fmt.Sprintf("user,id=n0,hostfwd=tcp:%s:%d-:22", d.cfg.ForwardHost, sshPort),
		"-device", "virtio-net-pci,netdev=n0",
		"-smbios", "type=11,value=io.systemd.credential:ssh.authorized_keys.root=" + authorized,
		"-fw_cfg", "name=opt/corral/ssh_key,string=" + authorized,
	}
	if tmpl.Disk != "" {
		overlay := filepath.Join(v.dir, "disk.qcow2")
		base, _ := filepath.Abs(filepath.Join(spec.TemplateDir, tmpl.Disk))
		out, err := exec.CommandContext(ctx, d.cfg.ImgBinary, "create", "-q", "-f", "qcow2",
			"-b", base, "-F", diskFormat(tmpl.Disk), overlay).CombinedOutput()
		if err != nil {
			return fmt.Errorf("qemu-img create overlay: %v: %s", err, out)
		}
		args = append(args, "-drive", "file="+overlay+",if=virtio,format=qcow2")
	}
	if tmpl.Kernel != "" {
		args = append(args, "-kernel", filepath.Join(spec.TemplateDir, tmpl.Kernel),
			// The line ends in a newline so keys appended later start a line of their own.
			"-append", strings.TrimSpace(tmpl.Cmdline+" corral.ssh_key="+base64.StdEncoding.EncodeToString([]byte(authorized+"\n"))))
		if tmpl.Initrd != "" {
			args = append(args, "-initrd", filepath.Join(spec.TemplateDir, tmpl.Initrd))
		}
	}
	vncPort := 0
	if d.cfg.VNC {
		if vncPort, err = freeVNCPort(); err != nil {
			return err
		}
		args = append(args, "-vnc", fmt.Sprintf("127.0.0.1:%d", vncPort-5900))
	}
	accel := d.Accelerator()
	if err := v.launch(accel, args); err != nil {
		return err
	}
	if accel == "kvm" {
		// KVM can open yet fail to run a guest (e.g. an MSR error in nested
		// setups); QEMU then exits at once. Fall back to TCG for good.
		select {
		case <-v.done:
			d.mu.Lock()
			d.kvmBroke = true
			d.mu.Unlock()
			d.cfg.Log.Warn("KVM failed to run a guest; using TCG software emulation", "err", v.exitErr)
			accel = "tcg"
			v.done = make(chan struct{})
			if err := v.launch(accel, args); err != nil {
				return err
			}
		case <-time.After(2 * time.Second):
		}
	}
	d.cfg.Log.Info("qemu guest booting", "instance", spec.InstanceID, "accel", accel, "ssh_port", sshPort)

	bootCtx, cancel := context.WithTimeout(ctx, d.cfg.BootTimeout)
	defer cancel()
	go func() {
		select {
		case <-v.done: // guest died while booting: stop waiting
			cancel()
		case <-bootCtx.Done():
		}
	}()
	host := d.cfg.ForwardHost
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	client, err := driver.DialGuest(bootCtx, net.JoinHostPort(host, strconv.Itoa(sshPort)), "root", ssh.PublicKeys(d.key))
	if err != nil {
		if v.crashed() {
			return fmt.Errorf("qemu guest exited while booting: %v; console: %s", v.exitErr, v.consoleTail())
		}
		return fmt.Errorf("qemu guest did not answer SSH: %w; console: %s", err, v.consoleTail())
	}
	v.ssh = client
	now := time.Now().UTC()
	v.info = apiv1.VMInfo{
		UUID: spec.InstanceID, Name: "corral-" + spec.InstanceID, Status: "running", CPUCores: cpus,
		RAM: ramString(ram), NodeID: spec.NodeID, HostIP: spec.HostIP, IP: "10.0.2.15",
		CreationDate: now, StartDate: now, Version: spec.Tag, Accelerator: accel,
		PortForwarding: []apiv1.PortForwarding{{GuestPort: 22, HostPort: sshPort, Protocol: "tcp", Name: "ssh"}},
	}
	if vncPort != 0 {
		v.info.VNCPort = vncPort
		v.info.VNCConnectionString = fmt.Sprintf("vnc://%s:%d", spec.HostIP, vncPort)
	}
	return nil
}

// launch starts QEMU and watches it: an exit we did not ask for closes done.
func (v *vm) launch(accel string, args []string) error {
	cmd := exec.Command(v.d.cfg.Binary, append([]string{"-accel", accel}, args...)...)
	stderr, err := os.Create(filepath.Join(v.dir, "qemu.stderr"))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Start(); err != nil {
		stderr.Close()
		return fmt.Errorf("start qemu: %w", err)
	}
	v.cmd = cmd
	done, exited := v.done, make(chan struct{})
	v.exited = exited
	go func() {
		err := cmd.Wait()
		defer close(exited)
		stderr.Close()
		v.mu.Lock()
		if err == nil {
			err = errors.New("guest powered off")
		}
		msg, _ := os.ReadFile(filepath.Join(v.dir, "qemu.stderr"))
		v.exitErr = fmt.Errorf("qemu exited: %v %s", err, strings.TrimSpace(string(msg)))
		wanted := v.stopped
		v.info.Status, v.info.StopDate = "stopped", time.Now().UTC()
		v.mu.Unlock()
		if !wanted {
			close(done)
		}
	}()
	return nil
}

func (v *vm) crashed() bool {
	select {
	case <-v.done:
		return true
	default:
		return false
	}
}

// Console answers the tail of the guest's serial console.
func (v *vm) Console(max int) string {
	return driver.TailFile(filepath.Join(v.dir, "console.log"), max)
}

func (v *vm) consoleTail() string {
	data, _ := os.ReadFile(filepath.Join(v.dir, "console.log"))
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	return strings.Join(lines[max(0, len(lines)-5):], " | ")
}

func (v *vm) Info() apiv1.VMInfo {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.info
}

func (v *vm) RunScript(ctx context.Context, script []byte) (apiv1.ScriptResult, error) {
	return driver.RunSSHScript(ctx, v.ssh, script)
}

// Stop quits QEMU through QMP (kill if it does not answer) and keeps the disk.
func (v *vm) Stop(context.Context) error {
	v.mu.Lock()
	if v.stopped {
		v.mu.Unlock()
		return nil
	}
	v.stopped = true
	v.mu.Unlock()
	if v.ssh != nil {
		v.ssh.Close()
	}
	if q, err := dialQMP(filepath.Join(v.dir, "qmp.sock")); err == nil {
		_, _ = q.execute("quit")
		q.close()
	}
	v.kill()
	return nil
}

// kill makes sure the QEMU process is gone, giving a QMP quit 3 s first.
func (v *vm) kill() {
	if v.cmd == nil {
		return
	}
	select {
	case <-v.exited:
		return
	case <-time.After(3 * time.Second):
	}
	_ = v.cmd.Process.Kill()
	<-v.exited
}

// Save flushes the guest's writes, shuts it down and writes the template
// with the overlay flattened into a full (sparse) disk of the template's format.
func (v *vm) Save(ctx context.Context, dir string, suspend bool) (string, error) {
	if v.ssh != nil {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, _ = driver.RunSSHScript(sctx, v.ssh, []byte("sync"))
		cancel()
	}
	_ = v.Stop(ctx)
	if err := driver.CopyTemplateFiles(v.templateDir, dir, v.tmpl.Disk); err != nil {
		return "", err
	}
	if v.tmpl.Disk != "" {
		out, err := exec.CommandContext(ctx, v.d.cfg.ImgBinary, "convert", "-q", "-O", diskFormat(v.tmpl.Disk),
			filepath.Join(v.dir, "disk.qcow2"), filepath.Join(dir, v.tmpl.Disk)).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("qemu-img convert: %v: %s", err, out)
		}
	}
	if suspend {
		return "the qemu driver cannot suspend; the VM was shut down and its disk saved", nil
	}
	return "", nil
}

// Destroy stops the guest and deletes its overlay and state.
func (v *vm) Destroy(ctx context.Context) error {
	_ = v.Stop(ctx)
	return os.RemoveAll(v.dir)
}

func (v *vm) Done() <-chan struct{} { return v.done }

func (v *vm) Err() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.exitErr
}

func firstNonZero(vals ...int) int {
	for _, v := range vals {
		if v > 0 {
			return v
		}
	}
	return 0
}

func ramString(mb int) string {
	if mb%1024 == 0 {
		return strconv.Itoa(mb/1024) + "G"
	}
	return strconv.Itoa(mb) + "M"
}

func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("qemu: pick a forward port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func freeVNCPort() (int, error) {
	for p := 5900; p < 6000; p++ {
		if l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p))); err == nil {
			l.Close()
			return p, nil
		}
	}
	return 0, errors.New("qemu: no free VNC port in 5900-5999")
}
