// Package anka runs instances on macOS nodes through the anka command line,
// the way the reference product's node agent does: the template (pulled by
// Corral's chunk cache) is imported once as a local VM, each instance is a
// clone of it, and state comes from `anka --machine-readable show`.
//
// Command lines used (tests assert them exactly):
//
//	anka --machine-readable show <vm>
//	anka --machine-readable import <bundle> --name <template vm>
//	anka --machine-readable clone <template vm> <instance vm>
//	anka --machine-readable modify <instance vm> cpu <n> | ram <n>M
//	anka --machine-readable modify <instance vm> port --guest-port 22 ssh
//	anka --machine-readable start <instance vm>
//	anka run <instance vm> /bin/sh -s            (script on stdin)
//	anka --machine-readable stop --force <instance vm>
//	anka --machine-readable delete --yes <instance vm>
package anka

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/driver"
)

// Config tunes the driver.
type Config struct {
	Binary       string        // "anka"
	PollInterval time.Duration // how often a running VM's state is checked (5s)
	BootTimeout  time.Duration // until the VM has an IP (5m)
	Log          *slog.Logger
}

// Driver drives the anka CLI.
type Driver struct {
	cfg Config
	mu  sync.Mutex // one template import at a time
}

// New checks the anka CLI is installed.
func New(cfg Config) (*Driver, error) {
	if cfg.Binary == "" {
		cfg.Binary = "anka"
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 5 * time.Second
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 5 * time.Minute
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if _, err := exec.LookPath(cfg.Binary); err != nil {
		return nil, fmt.Errorf("anka driver: %s not found (it runs on macOS nodes with Anka installed)", cfg.Binary)
	}
	return &Driver{cfg: cfg}, nil
}

func (d *Driver) Name() string { return "anka" }

// vmShow is the body of `anka --machine-readable show`.
type vmShow struct {
	UUID           string                 `json:"uuid"`
	Name           string                 `json:"name"`
	Status         string                 `json:"status"`
	CPUCores       int                    `json:"cpu_cores"`
	RAM            string                 `json:"ram"`
	IP             string                 `json:"ip"`
	VNCPort        int                    `json:"vnc_port"`
	VNCConnection  string                 `json:"vnc_connection_string"`
	PortForwarding []apiv1.PortForwarding `json:"port_forwarding"`
}

// mr runs a --machine-readable command and decodes its envelope.
func (d *Driver) mr(ctx context.Context, out any, args ...string) error {
	cmd := exec.CommandContext(ctx, d.cfg.Binary, append([]string{"--machine-readable"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	var env struct {
		Status  string          `json:"status"`
		Message string          `json:"message"`
		Body    json.RawMessage `json:"body"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &env); err != nil {
		return fmt.Errorf("anka %s: %v: %s%s", strings.Join(args, " "), runErr, stdout.String(), stderr.String())
	}
	if env.Status != "OK" {
		return fmt.Errorf("anka %s: %s", strings.Join(args, " "), env.Message)
	}
	if out != nil && len(env.Body) > 0 {
		return json.Unmarshal(env.Body, out)
	}
	return nil
}

// ensureTemplate imports the pulled template as a local VM once.
func (d *Driver) ensureTemplate(ctx context.Context, spec driver.Spec) (string, error) {
	name := "corral-" + spec.VMID + "-" + spec.Tag
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mr(ctx, nil, "show", name) == nil {
		return name, nil
	}
	bundle, err := findBundle(spec.TemplateDir)
	if err != nil {
		return "", err
	}
	if err := d.mr(ctx, nil, "import", bundle, "--name", name); err != nil {
		return "", fmt.Errorf("register template with anka: %w", err)
	}
	return name, nil
}

// findBundle picks the template file anka imports: an .ankabundle if there
// is one, else the largest file (the VM image).
func findBundle(dir string) (string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("anka template %s: %w", dir, err)
	}
	best, size := "", int64(-1)
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if strings.HasSuffix(e.Name(), ".ankabundle") {
			return filepath.Join(dir, e.Name()), nil
		}
		if info.Size() > size {
			best, size = filepath.Join(dir, e.Name()), info.Size()
		}
	}
	if best == "" {
		return "", fmt.Errorf("anka template %s: no files", dir)
	}
	return best, nil
}

// Start clones the template, starts the clone and waits for its IP.
func (d *Driver) Start(ctx context.Context, spec driver.Spec) (driver.VM, error) {
	tmpl, err := d.ensureTemplate(ctx, spec)
	if err != nil {
		return nil, err
	}
	name := "corral-" + spec.InstanceID
	steps := [][]string{{"clone", tmpl, name}}
	if spec.VCPU > 0 {
		steps = append(steps, []string{"modify", name, "cpu", strconv.Itoa(spec.VCPU)})
	}
	if spec.VRAMMB > 0 {
		steps = append(steps, []string{"modify", name, "ram", strconv.Itoa(spec.VRAMMB) + "M"})
	}
	steps = append(steps, []string{"modify", name, "port", "--guest-port", "22", "ssh"}, []string{"start", name})
	v := &vm{d: d, name: name, spec: spec, done: make(chan struct{})}
	for _, step := range steps {
		if err := d.mr(ctx, nil, step...); err != nil {
			_ = v.Destroy(context.WithoutCancel(ctx))
			return nil, err
		}
	}
	bootCtx, cancel := context.WithTimeout(ctx, d.cfg.BootTimeout)
	defer cancel()
	for {
		show, err := v.show(bootCtx)
		if err == nil && show.IP != "" {
			break
		}
		select {
		case <-bootCtx.Done():
			_ = v.Destroy(context.WithoutCancel(ctx))
			return nil, fmt.Errorf("anka VM %s got no IP: %w", name, bootCtx.Err())
		case <-time.After(d.cfg.PollInterval / 5):
		}
	}
	go v.watch()
	return v, nil
}

type vm struct {
	d    *Driver
	name string
	spec driver.Spec
	done chan struct{}

	mu      sync.Mutex
	info    apiv1.VMInfo
	err     error
	stopped bool
}

// show refreshes the VM's info from anka.
func (v *vm) show(ctx context.Context) (vmShow, error) {
	var s vmShow
	if err := v.d.mr(ctx, &s, "show", v.name); err != nil {
		return s, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	now := time.Now().UTC()
	if v.info.CreationDate.IsZero() {
		v.info.CreationDate, v.info.StartDate = now, now
	}
	v.info.UUID, v.info.Name, v.info.Status = cmpOr(s.UUID, v.spec.InstanceID), s.Name, s.Status
	v.info.CPUCores, v.info.RAM, v.info.IP = s.CPUCores, s.RAM, s.IP
	v.info.VNCPort, v.info.VNCConnectionString = s.VNCPort, s.VNCConnection
	v.info.NodeID, v.info.HostIP, v.info.Version, v.info.Accelerator = v.spec.NodeID, v.spec.HostIP, v.spec.Tag, "anka"
	v.info.PortForwarding = sshFirst(s.PortForwarding)
	return s, nil
}

// watch reports the VM stopping on its own.
func (v *vm) watch() {
	t := time.NewTicker(v.d.cfg.PollInterval)
	defer t.Stop()
	for range t.C {
		v.mu.Lock()
		stopped := v.stopped
		v.mu.Unlock()
		if stopped {
			return
		}
		s, err := v.show(context.Background())
		if err == nil && s.Status == "running" {
			continue
		}
		v.mu.Lock()
		if !v.stopped {
			if err != nil {
				v.err = fmt.Errorf("anka VM %s vanished: %w", v.name, err)
			} else {
				v.err = fmt.Errorf("anka VM %s is %s", v.name, s.Status)
			}
			v.info.Status, v.info.StopDate = "stopped", time.Now().UTC()
			close(v.done)
		}
		v.mu.Unlock()
		return
	}
}

func sshFirst(rules []apiv1.PortForwarding) []apiv1.PortForwarding {
	out := []apiv1.PortForwarding{}
	for _, r := range rules {
		if r.GuestPort == 22 {
			out = append([]apiv1.PortForwarding{r}, out...)
		} else {
			out = append(out, r)
		}
	}
	return out
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func (v *vm) Info() apiv1.VMInfo {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.info
}

// RunScript runs the script in the guest with `anka run`, script on stdin.
func (v *vm) RunScript(ctx context.Context, script []byte) (apiv1.ScriptResult, error) {
	return driver.RunScript(ctx, exec.CommandContext(ctx, v.d.cfg.Binary, "run", v.name, "/bin/sh", "-s"), script)
}

func (v *vm) Stop(ctx context.Context) error {
	v.mu.Lock()
	if v.stopped {
		v.mu.Unlock()
		return nil
	}
	v.stopped = true
	v.mu.Unlock()
	err := v.d.mr(ctx, nil, "stop", "--force", v.name)
	v.mu.Lock()
	v.info.Status, v.info.StopDate = "stopped", time.Now().UTC()
	v.mu.Unlock()
	return err
}

func (v *vm) Destroy(ctx context.Context) error {
	_ = v.Stop(ctx)
	return v.d.mr(ctx, nil, "delete", "--yes", v.name)
}

func (v *vm) Done() <-chan struct{} { return v.done }

func (v *vm) Err() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.err
}
