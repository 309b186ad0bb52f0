// Package tart runs instances on Apple Silicon Macs with Cirrus Labs' Tart
// (../shared/spec/drivers.md part B). Templates are OCI images in the
// registry's /v2/ endpoint, pulled by tart into its own cache, so a node
// fetches only what that cache lacks. An instance is:
//
//	tart clone <registry>/<repo>:<tag> corral-vm-<instance>   (pulls if not cached; --insecure over http)
//	tart set corral-vm-<instance> --cpu <n> --memory <MiB>    (when asked)
//	tart set corral-vm-<instance> --random-mac
//	tart run corral-vm-<instance> --no-graphics [--vnc]       (a supervised child process)
//	tart ip corral-vm-<instance> --wait <s>
//	ssh <user>@<ip>  /bin/sh -s                               (startup scripts; image's user/password or a key)
//	tart stop corral-vm-<instance> --timeout <s>; tart delete corral-vm-<instance>
//	tart push corral-vm-<instance> <registry>/<template>:<tag> (saving an instance)
//
// Registry credentials go to tart through TART_REGISTRY_USERNAME and
// TART_REGISTRY_PASSWORD (limited to the registry by TART_REGISTRY_HOSTNAME).
// Guest SSH is forwarded from a port on the node (port_forwarding), since
// Tart's shared network is reachable only from the host.
package tart

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/driver"
	"golang.org/x/crypto/ssh"
)

const instancePrefix = "corral-vm-"

// MaxMacOSVMs is Apple's licence limit of macOS VMs per host, which
// Virtualization.framework enforces.
const MaxMacOSVMs = 2

// Config tunes the driver.
type Config struct {
	Binary      string // "tart"
	User        string // guest SSH user ("admin", as in Cirrus Labs' images)
	Password    string // guest SSH password ("admin"); unused with KeyFile
	KeyFile     string // a private key the image authorises, instead of the password
	SSHPort     int    // the guest's sshd port (22)
	ForwardHost string // address the SSH forward listens on ("0.0.0.0")
	VNC         bool   // run with --vnc and report the VNC endpoint
	BootTimeout time.Duration
	PullTimeout time.Duration
	Log         *slog.Logger
}

// Driver drives the tart CLI.
type Driver struct {
	cfg  Config
	auth []ssh.AuthMethod

	mu       sync.Mutex
	reg      driver.Registry
	host     string // registry host[:port] in remote names
	insecure bool
	repos    map[string]string // template id -> repository
}

// New checks the tart CLI is installed.
func New(cfg Config) (*Driver, error) {
	if cfg.Binary == "" {
		cfg.Binary = "tart"
	}
	if cfg.User == "" {
		cfg.User = "admin"
	}
	if cfg.Password == "" && cfg.KeyFile == "" {
		cfg.Password = "admin"
	}
	if cfg.SSHPort == 0 {
		cfg.SSHPort = 22
	}
	if cfg.ForwardHost == "" {
		cfg.ForwardHost = "0.0.0.0"
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 5 * time.Minute
	}
	if cfg.PullTimeout == 0 {
		cfg.PullTimeout = 2 * time.Hour
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if _, err := exec.LookPath(cfg.Binary); err != nil {
		return nil, fmt.Errorf("tart driver: %s not found (it runs on Apple Silicon Macs with Tart installed)", cfg.Binary)
	}
	d := &Driver{cfg: cfg, repos: map[string]string{}}
	if cfg.KeyFile != "" {
		data, err := os.ReadFile(cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tart driver: ssh key: %w", err)
		}
		signer, err := ssh.ParsePrivateKey(data)
		if err != nil {
			return nil, fmt.Errorf("tart driver: ssh key %s: %w", cfg.KeyFile, err)
		}
		d.auth = []ssh.AuthMethod{ssh.PublicKeys(signer)}
	} else {
		d.auth = []ssh.AuthMethod{ssh.Password(cfg.Password)}
	}
	return d, nil
}

func (d *Driver) Name() string { return "tart" }

// TartError is a tart command that failed: its exit code and message.
type TartError struct {
	Args    []string
	Code    int
	Message string
}

func (e *TartError) Error() string {
	return fmt.Sprintf("tart %s: %s (exit %d)", strings.Join(e.Args, " "), e.Message, e.Code)
}

// tart runs one command with a deadline and the registry's credentials.
func (d *Driver) tart(ctx context.Context, timeout time.Duration, args ...string) (string, error) {
	return d.tartAs(ctx, nil, timeout, args...)
}

// tartAs runs a command with creds (nil: the node's pull credentials).
func (d *Driver) tartAs(ctx context.Context, creds driver.Credentials, timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.cfg.Binary, args...)
	env, err := d.env(ctx, creds)
	if err != nil {
		return "", err
	}
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return stdout.String(), fmt.Errorf("tart %s: %w", strings.Join(args, " "), ctx.Err())
	case errors.As(err, &exit):
		return stdout.String(), &TartError{Args: args, Code: exit.ExitCode(), Message: firstLine(stderr.String(), stdout.String())}
	case err != nil:
		return stdout.String(), fmt.Errorf("tart %s: %w", strings.Join(args, " "), err)
	}
	return stdout.String(), nil
}

// firstLine is what Orchard reports of a failed tart command: the first
// non-empty line of stderr, else of stdout.
func firstLine(texts ...string) string {
	for _, t := range texts {
		for _, l := range strings.Split(t, "\n") {
			if l = strings.TrimSpace(strings.TrimPrefix(l, "Error: ")); l != "" {
				return l
			}
		}
	}
	return "failed"
}

func exitCode(err error) int {
	var te *TartError
	if errors.As(err, &te) {
		return te.Code
	}
	return -1
}

// env is tart's environment: ours plus the registry's credentials (creds,
// or the node's pull credentials when nil).
func (d *Driver) env(ctx context.Context, creds driver.Credentials) ([]string, error) {
	env := os.Environ()
	env = append(env, "CI=1") // plain progress output
	d.mu.Lock()
	reg, host := d.reg, d.host
	d.mu.Unlock()
	if creds == nil {
		creds = reg.Credentials
	}
	if creds != nil && host != "" {
		user, pass, err := creds(ctx)
		if err != nil {
			return nil, fmt.Errorf("registry credentials: %w", err)
		}
		if pass != "" {
			env = append(env, "TART_REGISTRY_USERNAME="+user, "TART_REGISTRY_PASSWORD="+pass, "TART_REGISTRY_HOSTNAME="+host)
		}
	}
	return env, nil
}

// UseRegistry points the driver at the cloud's registry and returns the
// node's template cache: Tart's OCI cache.
func (d *Driver) UseRegistry(reg driver.Registry) driver.TemplateCache {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.reg = reg
	if u, err := url.Parse(reg.URL); err == nil {
		d.host, d.insecure = u.Host, u.Scheme == "http"
	}
	return &cache{d: d}
}

func (d *Driver) insecureFlag() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.insecure {
		return []string{"--insecure"}
	}
	return nil
}

// remote is the remote name of a template's tag; repository from the
// registry's catalog (the template's name).
func (d *Driver) remote(ctx context.Context, vmid, tag, name string) (string, error) {
	d.mu.Lock()
	repo, host, reg := d.repos[vmid], d.host, d.reg
	d.mu.Unlock()
	if host == "" {
		return "", errors.New("tart driver: the cloud has no registry to pull templates from")
	}
	if repo == "" && reg.Template != nil {
		t, err := reg.Template(ctx, vmid)
		if err != nil {
			return "", fmt.Errorf("template %s: %w", vmid, err)
		}
		repo = t.Name
	}
	if repo == "" {
		repo = name
	}
	if apiv1.OCITemplateID(repo) != vmid {
		return "", fmt.Errorf("template %s (%s) is not an OCI image: push templates for tart nodes with `tart push` to the registry's /v2/", vmid, repo)
	}
	d.mu.Lock()
	d.repos[vmid] = repo
	d.mu.Unlock()
	return host + "/" + repo + ":" + tag, nil
}

// listEntry is one item of `tart list --format json`.
type listEntry struct {
	Source  string `json:"Source"`
	Name    string `json:"Name"`
	State   string `json:"State"`
	Running bool   `json:"Running"`
}

func (d *Driver) list(ctx context.Context, source string) ([]listEntry, error) {
	out, err := d.tart(ctx, time.Minute, "list", "--source", source, "--format", "json")
	if err != nil {
		return nil, err
	}
	var items []listEntry
	if err := json.Unmarshal([]byte(out), &items); err != nil {
		return nil, fmt.Errorf("tart list: %w", err)
	}
	return items, nil
}

// cache is the node's view of Tart's OCI cache for the registry.
type cache struct{ d *Driver }

func (c *cache) Has(vmid, tag string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name, err := c.d.remote(ctx, vmid, tag, "")
	if err != nil {
		return false
	}
	items, err := c.d.list(ctx, "oci")
	if err != nil {
		return false
	}
	for _, it := range items {
		if it.Name == name {
			return true
		}
	}
	return false
}

func (c *cache) Pull(ctx context.Context, vmid, tag, name string, progress func(float64)) error {
	remote, err := c.d.remote(ctx, vmid, tag, name)
	if err != nil {
		return err
	}
	progress(0)
	args := append([]string{"pull", remote}, c.d.insecureFlag()...)
	if _, err := c.d.tart(ctx, c.d.cfg.PullTimeout, args...); err != nil {
		return err
	}
	progress(1)
	return nil
}

// List reports the registry's images in the cache, by template id.
func (c *cache) List() []apiv1.NodeTemplate {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c.d.mu.Lock()
	host := c.d.host
	c.d.mu.Unlock()
	items, err := c.d.list(ctx, "oci")
	if err != nil {
		c.d.cfg.Log.Warn("tart list", "err", err)
		return nil
	}
	out := []apiv1.NodeTemplate{}
	for _, it := range items {
		rest, ok := strings.CutPrefix(it.Name, host+"/")
		if !ok || strings.Contains(rest, "@") {
			continue
		}
		i := strings.LastIndex(rest, ":")
		if i < 0 {
			continue
		}
		repo, tag := rest[:i], rest[i+1:]
		out = append(out, apiv1.NodeTemplate{UUID: apiv1.OCITemplateID(repo), Name: repo, Tag: tag})
	}
	return out
}

// Remove deletes an image's tag from Tart's OCI cache.
func (c *cache) Remove(ctx context.Context, vmid, tag string) error {
	name, err := c.d.remote(ctx, vmid, tag, "")
	if err != nil {
		return err
	}
	_, err = c.d.tart(ctx, time.Minute, "delete", name)
	if exitCode(err) == 2 { // not cached
		return nil
	}
	return err
}

// Sweep deletes the instance VMs an earlier run of the agent left, so they
// do not hold the host's two macOS VM slots.
func (d *Driver) Sweep(ctx context.Context) error {
	items, err := d.list(ctx, "local")
	if err != nil {
		return err
	}
	for _, it := range items {
		if !strings.HasPrefix(it.Name, instancePrefix) {
			continue
		}
		d.cfg.Log.Info("deleting a VM left by an earlier run of the agent", "vm", it.Name)
		if it.Running || it.State == "running" {
			_, _ = d.tart(ctx, time.Minute, "stop", it.Name, "--timeout", "10")
		}
		if _, err := d.tart(ctx, time.Minute, "delete", it.Name); err != nil && exitCode(err) != 2 {
			return err
		}
	}
	return nil
}

// Start clones the image, runs it, waits for its IP and its sshd.
func (d *Driver) Start(ctx context.Context, spec driver.Spec) (driver.VM, error) {
	remote, err := d.remote(ctx, spec.VMID, spec.Tag, spec.TemplateName)
	if err != nil {
		return nil, err
	}
	name := instancePrefix + spec.InstanceID
	v := &vm{d: d, name: name, spec: spec, done: make(chan struct{})}
	fail := func(err error) (driver.VM, error) {
		_ = v.Destroy(context.WithoutCancel(ctx))
		return nil, err
	}
	if _, err := d.tart(ctx, d.cfg.PullTimeout, append([]string{"clone", remote, name}, d.insecureFlag()...)...); err != nil {
		return nil, err
	}
	set := []string{"set", name}
	if spec.VCPU > 0 {
		set = append(set, "--cpu", strconv.Itoa(spec.VCPU))
	}
	if spec.VRAMMB > 0 {
		set = append(set, "--memory", strconv.Itoa(spec.VRAMMB))
	}
	if len(set) > 2 {
		if _, err := d.tart(ctx, time.Minute, set...); err != nil {
			return fail(err)
		}
	}
	if _, err := d.tart(ctx, time.Minute, "set", name, "--random-mac"); err != nil {
		return fail(err)
	}
	if err := v.run(); err != nil {
		return fail(err)
	}
	bootCtx, cancel := context.WithTimeout(ctx, d.cfg.BootTimeout)
	defer cancel()
	ip, err := v.waitIP(bootCtx)
	if err != nil {
		return fail(err)
	}
	addr := net.JoinHostPort(ip, strconv.Itoa(d.cfg.SSHPort))
	client, err := driver.DialGuest(bootCtx, addr, d.cfg.User, d.auth...)
	if err != nil {
		return fail(fmt.Errorf("tart VM %s: %w", name, err))
	}
	v.mu.Lock()
	v.ssh = client
	v.mu.Unlock()
	fwd, err := driver.Forward(net.JoinHostPort(d.cfg.ForwardHost, "0"), addr)
	if err != nil {
		return fail(err)
	}
	v.fwd = fwd
	now := time.Now().UTC()
	info := apiv1.VMInfo{UUID: spec.InstanceID, Name: name, Status: "running", IP: ip,
		CPUCores: spec.VCPU, NodeID: spec.NodeID, HostIP: spec.HostIP, Version: spec.Tag, Accelerator: "tart",
		CreationDate: now, StartDate: now,
		PortForwarding: []apiv1.PortForwarding{{GuestPort: d.cfg.SSHPort, HostPort: fwd.Port(), Protocol: "tcp", Name: "ssh"}}}
	if spec.VRAMMB > 0 {
		info.RAM = strconv.Itoa(spec.VRAMMB) + "M"
	}
	if d.cfg.VNC {
		info.VNCPort = 5900
		info.VNCConnectionString = "vnc://" + net.JoinHostPort(ip, "5900")
	}
	if cpu, ram, err := d.get(ctx, name); err == nil {
		info.CPUCores, info.RAM = cpu, ram
	}
	v.mu.Lock()
	v.info = info
	v.mu.Unlock()
	return v, nil
}

// get reads a VM's CPU count and memory (`tart get --format json`).
func (d *Driver) get(ctx context.Context, name string) (int, string, error) {
	out, err := d.tart(ctx, time.Minute, "get", name, "--format", "json")
	if err != nil {
		return 0, "", err
	}
	var g struct {
		CPU    apiv1.FlexInt `json:"CPU"`
		Memory apiv1.FlexInt `json:"Memory"` // MiB
	}
	if err := json.Unmarshal([]byte(out), &g); err != nil {
		return 0, "", err
	}
	ram := strconv.FormatInt(int64(g.Memory), 10) + "M"
	if g.Memory%1024 == 0 {
		ram = strconv.FormatInt(int64(g.Memory)/1024, 10) + "G"
	}
	return int(g.CPU), ram, nil
}

type vm struct {
	d    *Driver
	name string
	spec driver.Spec
	done chan struct{}
	cmd  *exec.Cmd
	ssh  *ssh.Client
	fwd  *driver.Forwarder

	mu       sync.Mutex
	info     apiv1.VMInfo
	err      error
	stopping bool
	exited   bool
	stderr   bytes.Buffer
}

// run starts `tart run` as a child process the VM's lifetime follows.
func (v *vm) run() error {
	args := []string{"run", v.name, "--no-graphics"}
	if v.d.cfg.VNC {
		args = append(args, "--vnc")
	}
	cmd := exec.Command(v.d.cfg.Binary, args...)
	env, err := v.d.env(context.Background(), nil)
	if err != nil {
		return err
	}
	cmd.Env = env
	cmd.Stdout = io.Discard
	cmd.Stderr = &lockedWriter{mu: &v.mu, w: &v.stderr}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // a Ctrl-C to the agent is not the VM's
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("tart run %s: %w", v.name, err)
	}
	v.cmd = cmd
	go func() {
		err := cmd.Wait()
		v.mu.Lock()
		defer v.mu.Unlock()
		v.exited = true
		if !v.stopping {
			v.err = fmt.Errorf("tart run %s exited unexpectedly (%v): %s", v.name, err, firstLine(v.stderr.String()))
			v.info.Status, v.info.StopDate = "stopped", time.Now().UTC()
		}
		close(v.done)
	}()
	return nil
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w.Len() > 64<<10 {
		return len(p), nil
	}
	return l.w.Write(p)
}

// waitIP asks tart for the VM's address until ctx ends or the VM exits.
func (v *vm) waitIP(ctx context.Context) (string, error) {
	for {
		out, err := v.d.tart(ctx, 30*time.Second, "ip", v.name, "--wait", "10")
		if err == nil && strings.TrimSpace(out) != "" {
			return strings.TrimSpace(out), nil
		}
		select {
		case <-v.done:
			return "", v.Err()
		case <-ctx.Done():
			return "", fmt.Errorf("tart VM %s got no IP: %w (last: %v)", v.name, ctx.Err(), err)
		default:
		}
	}
}

func (v *vm) Info() apiv1.VMInfo {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.info
}

// RunScript runs the script over SSH with /bin/sh, redialling once if the
// connection dropped.
func (v *vm) RunScript(ctx context.Context, script []byte) (apiv1.ScriptResult, error) {
	v.mu.Lock()
	client, addr, stopping := v.ssh, net.JoinHostPort(v.info.IP, strconv.Itoa(v.d.cfg.SSHPort)), v.stopping
	v.mu.Unlock()
	if stopping {
		return apiv1.ScriptResult{}, fmt.Errorf("tart VM %s is stopped", v.name)
	}
	res, err := driver.RunSSHScript(ctx, client, script)
	if err != nil && ctx.Err() == nil {
		dctx, cancel := context.WithTimeout(ctx, time.Minute)
		fresh, derr := driver.DialGuest(dctx, addr, v.d.cfg.User, v.d.auth...)
		cancel()
		if derr != nil {
			return res, err
		}
		v.mu.Lock()
		old := v.ssh
		v.ssh = fresh
		v.mu.Unlock()
		old.Close()
		return driver.RunSSHScript(ctx, fresh, script)
	}
	return res, err
}

// Stop asks tart to stop the VM (SIGINT, then SIGKILL after the timeout)
// and waits for `tart run` to exit.
func (v *vm) Stop(ctx context.Context) error {
	v.mu.Lock()
	if v.stopping && v.exited {
		v.mu.Unlock()
		return nil
	}
	v.stopping = true
	exited, client := v.exited, v.ssh
	v.mu.Unlock()
	if v.fwd != nil {
		v.fwd.Close()
	}
	if client != nil {
		client.Close()
	}
	var err error
	if !exited && v.cmd != nil {
		_, err = v.d.tart(ctx, 2*time.Minute, "stop", v.name, "--timeout", "30")
		if exitCode(err) == 2 { // not running any more
			err = nil
		}
		select {
		case <-v.done:
		case <-time.After(time.Minute):
			_ = v.cmd.Process.Kill()
			<-v.done
		}
	}
	v.mu.Lock()
	v.info.Status, v.info.StopDate = "stopped", time.Now().UTC()
	v.mu.Unlock()
	return err
}

func (v *vm) Destroy(ctx context.Context) error {
	_ = v.Stop(ctx)
	_, err := v.d.tart(ctx, 2*time.Minute, "delete", v.name)
	if exitCode(err) == 2 {
		return nil
	}
	return err
}

// Push saves the VM as template:tag in the registry's OCI endpoint.
func (v *vm) Push(ctx context.Context, template, tag string, creds driver.Credentials) (string, string, error) {
	v.d.mu.Lock()
	host := v.d.host
	v.d.mu.Unlock()
	if host == "" {
		return "", "", errors.New("this cloud has no registry to save the image into")
	}
	if err := checkRepo(template); err != nil {
		return "", "", err
	}
	if err := v.Stop(ctx); err != nil {
		return "", "", err
	}
	args := append([]string{"push", v.name, host + "/" + template + ":" + tag}, v.d.insecureFlag()...)
	if _, err := v.d.tartAs(ctx, creds, v.d.cfg.PullTimeout, args...); err != nil {
		return "", "", err
	}
	return apiv1.OCITemplateID(template), "", nil
}

func checkRepo(name string) error {
	for _, part := range strings.Split(name, "/") {
		if part == "" {
			return fmt.Errorf("template name %q is not an OCI repository name (lowercase letters, digits, . _ - and /)", name)
		}
		for _, r := range part {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
				return fmt.Errorf("template name %q is not an OCI repository name (lowercase letters, digits, . _ - and /)", name)
			}
		}
	}
	return nil
}

func (v *vm) Done() <-chan struct{} { return v.done }

func (v *vm) Err() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.err
}
