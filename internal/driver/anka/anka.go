// Package anka runs instances on macOS nodes through the anka command line
// (Anka 3, ../shared/spec/drivers.md part A), the way the reference
// product's node agent does: the template (pulled by Corral's chunk cache as
// an `anka export` file) is imported once and renamed, each instance is a
// clone of it, and state comes from `anka --machine-readable show`.
//
// Command lines used (tests run them against a strict fake of the CLI):
//
//	anka --machine-readable list
//	anka --machine-readable import <export file>     (keeps the exported name)
//	anka --machine-readable modify <uuid> name corral-tmpl-<vmid>-<tag>
//	anka --machine-readable clone <template vm> corral-vm-<instance>
//	anka --machine-readable modify <vm> cpu <n>  |  ram <n>M
//	anka --machine-readable show <vm> network
//	anka --machine-readable modify <vm> port ssh 22   (only without a guest-22 rule)
//	anka --machine-readable start <vm>
//	anka --machine-readable show <vm>
//	anka run <vm> /bin/sh -s                        (script on stdin)
//	anka --machine-readable stop [--force] <vm>
//	anka --machine-readable export <vm> <file>      (save; Enterprise licence)
//	anka --machine-readable delete --yes <vm>
//	anka --machine-readable license show
//
// Licences: import and export (templates from Corral's registry, saving an
// instance) need Anka Enterprise; Develop runs one VM at a time; the Run
// licence runs two (Apple's limit on macOS VMs per host).
package anka

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/driver"
)

// Names of the VMs this driver makes: templates and instances.
const (
	templatePrefix = "corral-tmpl-"
	instancePrefix = "corral-vm-"
)

// Config tunes the driver.
type Config struct {
	Binary         string        // "anka"
	PollInterval   time.Duration // how often a running VM's state is checked (5s)
	BootTimeout    time.Duration // until the VM has an IP (5m)
	CommandTimeout time.Duration // one anka command (start, import: 10m; others 2m)
	Log            *slog.Logger
}

// Driver drives the anka CLI.
type Driver struct {
	cfg     Config
	mu      sync.Mutex // one template import at a time
	licence string     // license_type, "" when unknown
}

// New checks the anka CLI is installed and reads its licence.
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
	if cfg.CommandTimeout == 0 {
		cfg.CommandTimeout = 2 * time.Minute
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if _, err := exec.LookPath(cfg.Binary); err != nil {
		return nil, fmt.Errorf("anka driver: %s not found (it runs on macOS nodes with Anka installed)", cfg.Binary)
	}
	d := &Driver{cfg: cfg}
	var lic struct {
		Status      string `json:"status"`
		LicenseType string `json:"license_type"`
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.CommandTimeout)
	defer cancel()
	if err := d.mr(ctx, &lic, "license", "show"); err != nil {
		cfg.Log.Warn("anka licence unknown", "err", err)
	} else {
		d.licence = lic.LicenseType
		cfg.Log.Info("anka licence", "type", lic.LicenseType, "status", lic.Status)
		if !d.enterprise() {
			cfg.Log.Warn("this Anka licence cannot import or export VMs: templates from Corral's registry and saving instances need Anka Enterprise", "type", lic.LicenseType)
		}
	}
	return d, nil
}

func (d *Driver) Name() string { return "anka" }

// enterprise reports whether the licence allows import and export (unknown
// licences are tried, and anka's own refusal is reported).
func (d *Driver) enterprise() bool {
	return d.licence == "" || strings.Contains(d.licence, ".ent")
}

// AnkaError is a command anka refused: its envelope's code and message.
type AnkaError struct {
	Args    []string
	Code    int
	Message string
}

func (e *AnkaError) Error() string {
	return fmt.Sprintf("anka %s: %s (code %d)", strings.Join(e.Args, " "), e.Message, e.Code)
}

// Codes anka documents.
const (
	codeNotFound = 3
	codeExists   = 18
)

// mr runs a --machine-readable command and decodes its envelope: the last
// non-empty stdout line (pulls print several), status OK or ERROR.
func (d *Driver) mr(ctx context.Context, out any, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.CommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.cfg.Binary, append([]string{"--machine-readable"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	runErr := cmd.Run()
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	var env struct {
		Status  string          `json:"status"`
		Code    int             `json:"code"`
		Message string          `json:"message"`
		Body    json.RawMessage `json:"body"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &env); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("anka %s: %w", strings.Join(args, " "), ctx.Err())
		}
		return fmt.Errorf("anka %s: %v: %s%s", strings.Join(args, " "), runErr, stdout.String(), lastLine(stderr.String()))
	}
	if env.Status != "OK" {
		return &AnkaError{Args: args, Code: env.Code, Message: env.Message}
	}
	if runErr != nil {
		return fmt.Errorf("anka %s: %w", strings.Join(args, " "), runErr)
	}
	if out != nil && len(env.Body) > 0 {
		if err := json.Unmarshal(env.Body, out); err != nil {
			return fmt.Errorf("anka %s: unexpected body %s: %w", strings.Join(args, " "), env.Body, err)
		}
	}
	return nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func isCode(err error, code int) bool {
	var ae *AnkaError
	return errors.As(err, &ae) && ae.Code == code
}

// listItem is one entry of `anka list`.
type listItem struct {
	Name   string `json:"name"`
	UUID   string `json:"uuid"`
	Status string `json:"status"`
}

func (d *Driver) list(ctx context.Context) ([]listItem, error) {
	var items []listItem
	err := d.mr(ctx, &items, "list")
	return items, err
}

func templateName(vmid, tag string) string { return templatePrefix + vmid + "-" + tag }

// ensureTemplate imports the pulled template as a local VM once. anka import
// keeps the exported VM's name, so the new VM (the one `list` did not show
// before) is renamed to the template's local name.
func (d *Driver) ensureTemplate(ctx context.Context, spec driver.Spec) (string, error) {
	name := templateName(spec.VMID, spec.Tag)
	d.mu.Lock()
	defer d.mu.Unlock()
	err := d.mr(ctx, nil, "show", name)
	if err == nil {
		return name, nil
	}
	if !isCode(err, codeNotFound) {
		return "", err
	}
	if !d.enterprise() {
		return "", fmt.Errorf("anka template %s: importing a template from Corral's registry needs an Anka Enterprise licence (this node has %s)", spec.TemplateName, d.licence)
	}
	bundle, err := findBundle(spec.TemplateDir)
	if err != nil {
		return "", err
	}
	before, err := d.list(ctx)
	if err != nil {
		return "", err
	}
	if err := d.mr(ctx, nil, "import", bundle); err != nil {
		return "", fmt.Errorf("register template with anka: %w", err)
	}
	after, err := d.list(ctx)
	if err != nil {
		return "", err
	}
	var fresh []listItem
	for _, it := range after {
		if !slices.ContainsFunc(before, func(b listItem) bool { return b.UUID == it.UUID }) {
			fresh = append(fresh, it)
		}
	}
	if len(fresh) != 1 {
		return "", fmt.Errorf("register template with anka: import of %s added %d VMs, want 1", bundle, len(fresh))
	}
	if err := d.mr(ctx, nil, "modify", fresh[0].UUID, "name", name); err != nil {
		return "", fmt.Errorf("register template with anka: %w", err)
	}
	return name, nil
}

// TemplateEvicted deletes the imported VM of a template the node deleted.
func (d *Driver) TemplateEvicted(ctx context.Context, vmid, tag string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	err := d.mr(ctx, nil, "delete", "--yes", templateName(vmid, tag))
	if isCode(err, codeNotFound) {
		return nil
	}
	return err
}

// Sweep deletes the instance VMs a previous run of the agent left (it
// restarted while they ran; their instances are failed as lost), so they
// do not hold the host's VM slots. Call it before starting any instance.
func (d *Driver) Sweep(ctx context.Context) error {
	items, err := d.list(ctx)
	if err != nil {
		return err
	}
	for _, it := range items {
		if !strings.HasPrefix(it.Name, instancePrefix) {
			continue
		}
		d.cfg.Log.Info("deleting a VM left by an earlier run of the agent", "vm", it.Name)
		if it.Status == "running" || it.Status == "failed" {
			_ = d.mr(ctx, nil, "stop", "--force", it.UUID)
		}
		if err := d.mr(ctx, nil, "delete", "--yes", it.UUID); err != nil && !isCode(err, codeNotFound) {
			return err
		}
	}
	return nil
}

// findBundle picks the template file anka imports: an .ankabundle if there
// is one, else the largest file (the export).
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

// rule is a port forwarding rule in anka's JSON (Anka 2 named it rule_name).
type rule struct {
	Name      string        `json:"name"`
	RuleName  string        `json:"rule_name"`
	Protocol  string        `json:"protocol"`
	GuestPort apiv1.FlexInt `json:"guest_port"`
	HostPort  apiv1.FlexInt `json:"host_port"`
}

func (r rule) api() apiv1.PortForwarding {
	return apiv1.PortForwarding{Name: cmpOr(r.Name, r.RuleName), Protocol: cmpOr(r.Protocol, "tcp"),
		GuestPort: int(r.GuestPort), HostPort: int(r.HostPort)}
}

type network struct {
	Rules []rule `json:"port_forwarding_rules"`
}

// ensureSSHRule forwards guest port 22 unless the VM (its template) already
// does: anka refuses a second rule with the same name or guest port.
func (d *Driver) ensureSSHRule(ctx context.Context, name string) error {
	var n network
	if err := d.mr(ctx, &n, "show", name, "network"); err != nil {
		return err
	}
	taken := map[string]bool{}
	for _, r := range n.Rules {
		if r.GuestPort == 22 {
			return nil
		}
		taken[cmpOr(r.Name, r.RuleName)] = true
	}
	rn := "ssh"
	if taken[rn] {
		rn = "corral-ssh"
	}
	return d.mr(ctx, nil, "modify", name, "port", rn, "22")
}

// Start clones the template, starts the clone and waits for its IP.
func (d *Driver) Start(ctx context.Context, spec driver.Spec) (driver.VM, error) {
	tmpl, err := d.ensureTemplate(ctx, spec)
	if err != nil {
		return nil, err
	}
	name := instancePrefix + spec.InstanceID
	v := &vm{d: d, name: name, spec: spec, done: make(chan struct{}), stop: make(chan struct{}), watched: make(chan struct{})}
	fail := func(err error) (driver.VM, error) {
		close(v.watched) // never started
		_ = v.Destroy(context.WithoutCancel(ctx))
		return nil, err
	}
	err = d.mr(ctx, nil, "clone", tmpl, name)
	if isCode(err, codeExists) { // a clone left by an earlier try of this instance
		if err = d.mr(ctx, nil, "delete", "--yes", name); err == nil {
			err = d.mr(ctx, nil, "clone", tmpl, name)
		}
	}
	if err != nil {
		return nil, err
	}
	if spec.VCPU > 0 {
		if err := d.mr(ctx, nil, "modify", name, "cpu", strconv.Itoa(spec.VCPU)); err != nil {
			return fail(err)
		}
	}
	if spec.VRAMMB > 0 {
		if err := d.mr(ctx, nil, "modify", name, "ram", strconv.Itoa(spec.VRAMMB)+"M"); err != nil {
			return fail(err)
		}
	}
	if err := d.ensureSSHRule(ctx, name); err != nil {
		return fail(err)
	}
	if err := d.mr(ctx, nil, "start", name); err != nil {
		return fail(err)
	}
	bootCtx, cancel := context.WithTimeout(ctx, d.cfg.BootTimeout)
	defer cancel()
	for {
		show, err := v.refresh(bootCtx)
		if err == nil && show.IP != "" {
			break
		}
		select {
		case <-bootCtx.Done():
			return fail(fmt.Errorf("anka VM %s got no IP: %w", name, bootCtx.Err()))
		case <-time.After(d.cfg.PollInterval / 5):
		}
	}
	go v.watch()
	return v, nil
}

// vmShow is the body of `anka --machine-readable show <vm>`. Sizes come as
// numbers or strings (ram is "4G" or "4294967296"; ram_size is bytes).
type vmShow struct {
	UUID           string          `json:"uuid"`
	Name           string          `json:"name"`
	Status         string          `json:"status"`
	CPUCores       apiv1.FlexInt   `json:"cpu_cores"`
	RAM            json.RawMessage `json:"ram"`
	RAMSize        apiv1.FlexInt   `json:"ram_size"`
	IP             string          `json:"ip"`
	VNCPort        apiv1.FlexInt   `json:"vnc_port"`
	VNCPassword    string          `json:"vnc_password"`
	VNCConnection  string          `json:"vnc_connection_string"`
	PortForwarding []rule          `json:"port_forwarding"`
}

// ramString is the VM's RAM as the API shows it ("8G").
func (s vmShow) ramString() string {
	bytes := int64(s.RAMSize)
	if bytes == 0 && len(s.RAM) > 0 {
		var str string
		if json.Unmarshal(s.RAM, &str) != nil {
			str = string(s.RAM)
		}
		if n, err := strconv.ParseInt(str, 10, 64); err == nil {
			bytes = n
		} else {
			return str // already "4G"
		}
	}
	switch {
	case bytes == 0:
		return ""
	case bytes%(1<<30) == 0:
		return strconv.FormatInt(bytes>>30, 10) + "G"
	default:
		return strconv.FormatInt(bytes>>20, 10) + "M"
	}
}

type vm struct {
	d    *Driver
	name string
	spec driver.Spec
	done chan struct{}

	// stop wakes the watcher when the VM is stopped on purpose; watched
	// is closed when the watcher has returned (its last anka command done).
	stop    chan struct{}
	watched chan struct{}

	mu      sync.Mutex
	info    apiv1.VMInfo
	err     error
	stopped bool
}

// refresh reads the VM's info and port forwards from anka.
func (v *vm) refresh(ctx context.Context) (vmShow, error) {
	var s vmShow
	if err := v.d.mr(ctx, &s, "show", v.name); err != nil {
		return s, err
	}
	rules := s.PortForwarding
	if s.Status == "running" {
		var n network
		if err := v.d.mr(ctx, &n, "show", v.name, "network"); err == nil && len(n.Rules) > 0 {
			rules = n.Rules
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	now := time.Now().UTC()
	if v.info.CreationDate.IsZero() {
		v.info.CreationDate, v.info.StartDate = now, now
	}
	v.info.UUID, v.info.Name, v.info.Status = cmpOr(s.UUID, v.spec.InstanceID), s.Name, s.Status
	if v.stopped { // a refresh that raced Stop or Save must not undo it
		v.info.Status = "stopped"
	}
	v.info.CPUCores, v.info.RAM, v.info.IP = int(s.CPUCores), s.ramString(), s.IP
	v.info.VNCPort, v.info.VNCConnectionString = int(s.VNCPort), s.VNCConnection
	if v.info.VNCConnectionString == "" && s.VNCPort > 0 && s.IP != "" {
		v.info.VNCConnectionString = fmt.Sprintf("vnc://%s:%d", s.IP, s.VNCPort)
	}
	v.info.NodeID, v.info.HostIP, v.info.Version, v.info.Accelerator = v.spec.NodeID, v.spec.HostIP, v.spec.Tag, "anka"
	var pf []apiv1.PortForwarding
	for _, r := range rules {
		pf = append(pf, r.api())
	}
	v.info.PortForwarding = sshFirst(pf)
	return s, nil
}

// watch reports the VM stopping on its own.
func (v *vm) watch() {
	defer close(v.watched)
	t := time.NewTicker(v.d.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-v.stop:
			return
		}
		v.mu.Lock()
		stopped := v.stopped
		v.mu.Unlock()
		if stopped {
			return
		}
		s, err := v.refresh(context.Background()) // mr bounds each command
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

func (v *vm) markStopped() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	was := v.stopped
	if !was {
		close(v.stop)
	}
	v.stopped = true
	return was
}

func (v *vm) Stop(ctx context.Context) error {
	if v.markStopped() {
		return nil
	}
	err := v.d.mr(ctx, nil, "stop", "--force", v.name)
	v.mu.Lock()
	v.info.Status, v.info.StopDate = "stopped", time.Now().UTC()
	v.mu.Unlock()
	return err
}

func (v *vm) Destroy(ctx context.Context) error {
	_ = v.Stop(ctx)
	// The watcher's anka command in flight ends before the VM's files go.
	select {
	case <-v.watched:
	case <-ctx.Done():
	}
	err := v.d.mr(ctx, nil, "delete", "--yes", v.name)
	if isCode(err, codeNotFound) {
		return nil
	}
	return err
}

// Save shuts the VM down and exports it into dir as the template file the
// driver imports (anka export, an Enterprise feature). Suspend is not kept:
// an export carries no suspended state across hosts.
func (v *vm) Save(ctx context.Context, dir string, suspend bool) (string, error) {
	if !v.d.enterprise() {
		return "", fmt.Errorf("saving an anka instance needs `anka export`, an Anka Enterprise feature (this node has %s)", v.d.licence)
	}
	v.markStopped()
	if err := v.d.mr(ctx, nil, "stop", v.name); err != nil {
		if err := v.d.mr(ctx, nil, "stop", "--force", v.name); err != nil {
			return "", err
		}
	}
	v.mu.Lock()
	v.info.Status, v.info.StopDate = "stopped", time.Now().UTC()
	v.mu.Unlock()
	if err := v.d.mr(ctx, nil, "export", v.name, filepath.Join(dir, "vm.ankabundle")); err != nil {
		return "", err
	}
	note := ""
	if suspend {
		note = "saved stopped: anka exports carry no suspended state"
	}
	return note, nil
}

func (v *vm) Done() <-chan struct{} { return v.done }

func (v *vm) Err() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.err
}
