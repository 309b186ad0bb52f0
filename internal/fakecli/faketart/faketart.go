// Package faketart is a strict stand-in for Cirrus Labs' `tart` CLI,
// following ../shared/spec/drivers.md part B: swift-argument-parser rules
// (exit 64 for usage errors, --opt=v), exit 2 for a missing or not-running
// VM, 1 for other failures, `run` holding a lock on the VM's config.json
// while it runs, at most two running macOS VMs, `ip` failing without a
// lease, and pull/push speaking real OCI (Tart's media types, layer order
// and annotations, Bearer/Basic auth from TART_REGISTRY_USERNAME and
// TART_REGISTRY_PASSWORD) to a registry.
//
// What it cannot reproduce: there is no guest. `tart run` serves SSH on the
// VM's address (127.0.0.<n>, port $FAKE_TART_SSH_PORT, default 22) with the
// image's user and password (admin/admin), and runs commands on this host
// in the VM's directory. Disk layers are not compressed with Apple's LZ4
// (the registry treats layers as opaque bytes). State lives in $TART_HOME.
package faketart

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/corral-build/corral/internal/fakecli"
)

// Tool is the fake for fakecli.Dispatch and Install.
var Tool = fakecli.Tool{Name: "tart", Main: Main}

// exitError is a failure with tart's exit code; prefix prints "Error: ".
type exitError struct {
	code   int
	msg    string
	prefix bool
}

func (e *exitError) Error() string { return e.msg }

func usageErr(format string, a ...any) error {
	return &exitError{64, fmt.Sprintf(format, a...), true}
}
func runtimeErr(code int, format string, a ...any) error {
	return &exitError{code, fmt.Sprintf(format, a...), false}
}
func notExist(name string) error {
	return runtimeErr(2, "the specified VM %q does not exist", name)
}

type cli struct {
	home           string
	stdout, stderr io.Writer
	stdin          io.Reader
}

// Main runs one tart command line.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	home := os.Getenv("TART_HOME")
	if home == "" {
		h, _ := os.UserHomeDir()
		home = filepath.Join(h, ".tart")
	}
	if f := os.Getenv("FAKE_TART_LOG"); f != "" {
		if lf, err := os.OpenFile(f, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			fmt.Fprintln(lf, strings.Join(args, " "))
			lf.Close()
		}
	}
	c := &cli{home: home, stdout: stdout, stderr: stderr, stdin: stdin}
	err := c.dispatch(args)
	if err == nil {
		return 0
	}
	var ee *exitError
	var ue *fakecli.UsageError
	switch {
	case errors.As(err, &ee):
		if ee.prefix {
			fmt.Fprintf(stderr, "Error: %s\n", ee.msg)
		} else {
			fmt.Fprintln(stderr, ee.msg)
		}
		if ee.code == 64 {
			fmt.Fprintln(stderr, "Usage: tart <subcommand>\n  See 'tart --help' for more information.")
		}
		return ee.code
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "Error: %s\nUsage: tart <subcommand>\n", ue.Msg)
		return 64
	}
	fmt.Fprintf(stderr, "Error: %s\n", err)
	return 1
}

func flag(names ...string) fakecli.Option { return fakecli.Option{Names: names} }
func option(names ...string) fakecli.Option {
	return fakecli.Option{Names: names, Value: true}
}
func repeated(names ...string) fakecli.Option {
	return fakecli.Option{Names: names, Value: true, Multi: true}
}

func parse(args []string, opts ...fakecli.Option) (fakecli.Parsed, error) {
	p, err := fakecli.Parse(args, append(opts, flag("-h", "--help")), false, 0, true)
	var ue *fakecli.UsageError
	if errors.As(err, &ue) {
		return p, usageErr("%s", ue.Msg)
	}
	return p, err
}

func positional(p fakecli.Parsed, names ...string) error {
	if len(p.Args) < len(names) {
		return usageErr("Missing expected argument '<%s>'", names[len(p.Args)])
	}
	if len(p.Args) > len(names) {
		return usageErr("Unexpected argument '%s'", p.Args[len(names)])
	}
	return nil
}

func uintOpt(p fakecli.Parsed, name string, def int) (int, error) {
	v := p.Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, usageErr("The value '%s' is invalid for '%s'", v, name)
	}
	return n, nil
}

func (c *cli) dispatch(args []string) error {
	if len(args) == 0 {
		return usageErr("Missing expected subcommand")
	}
	switch args[0] {
	case "--version":
		fmt.Fprintln(c.stdout, "2.28.0")
		return nil
	case "create":
		return c.create(args[1:])
	case "clone":
		return c.clone(args[1:])
	case "set":
		return c.set(args[1:])
	case "get":
		return c.get(args[1:])
	case "list":
		return c.list(args[1:])
	case "run":
		return c.run(args[1:])
	case "ip":
		return c.ip(args[1:])
	case "stop":
		return c.stop(args[1:])
	case "delete":
		return c.delete(args[1:])
	case "pull":
		return c.pull(args[1:])
	case "push":
		return c.push(args[1:])
	}
	return usageErr("Unexpected argument '%s'", args[0])
}

// VM config (vms/<name>/config.json).
type vmConfig struct {
	Version       int            `json:"version"`
	OS            string         `json:"os"`
	Arch          string         `json:"arch"`
	CPUCountMin   int            `json:"cpuCountMin"`
	CPUCount      int            `json:"cpuCount"`
	MemorySizeMin int64          `json:"memorySizeMin"`
	MemorySize    int64          `json:"memorySize"`
	MACAddress    string         `json:"macAddress"`
	Display       map[string]any `json:"display"`
	DiskFormat    string         `json:"diskFormat"`
}

func (c *cli) vmPath(name string) string { return filepath.Join(c.home, "vms", name) }

var localName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// exists: a VM directory counts only with all three files.
func (c *cli) exists(name string) bool {
	if !localName.MatchString(name) {
		return false
	}
	for _, f := range []string{"config.json", "disk.img", "nvram.bin"} {
		if _, err := os.Stat(filepath.Join(c.vmPath(name), f)); err != nil {
			return false
		}
	}
	return true
}

func (c *cli) readConfig(dir string) (vmConfig, error) {
	var cfg vmConfig
	data, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return cfg, err
	}
	return cfg, jsonUnmarshal(data, &cfg)
}

func (c *cli) writeConfig(dir string, cfg vmConfig) error {
	return fakecli.WriteFileAtomic(filepath.Join(dir, "config.json"), jsonIndent(cfg))
}

// running reports whether a process holds the lock on the VM's config.json.
func (c *cli) running(name string) bool {
	f, err := os.Open(filepath.Join(c.vmPath(name), "config.json"))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return true
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false
}

func (c *cli) localVMs() []string {
	entries, _ := os.ReadDir(filepath.Join(c.home, "vms"))
	var names []string
	for _, e := range entries {
		if c.exists(e.Name()) {
			names = append(names, e.Name())
		}
	}
	return names
}

func randomMAC() string {
	b := make([]byte, 6)
	readRandom(b)
	b[0] = (b[0] | 2) &^ 1
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3], b[4], b[5])
}

// create makes a VM (for tests: the disk is $FAKE_TART_DISK_BYTES long when
// set, else --disk-size GB, sparse), of this host's architecture as tart makes them.
func (c *cli) create(args []string) error {
	p, err := parse(args, option("--from-ipsw"), flag("--linux"), option("--disk-size"), option("--disk-format"))
	if err != nil {
		return err
	}
	if err := positional(p, "name"); err != nil {
		return err
	}
	if p.Has("--from-ipsw") == p.Has("--linux") {
		return usageErr("please specify either a --from-ipsw or --linux option")
	}
	name := p.Args[0]
	if !localName.MatchString(name) {
		return usageErr("%s should be a local name", name)
	}
	size, err := uintOpt(p, "--disk-size", 50)
	if err != nil {
		return err
	}
	bytes := int64(size) * 1e9
	if v := os.Getenv("FAKE_TART_DISK_BYTES"); v != "" {
		bytes, _ = strconv.ParseInt(v, 10, 64)
	}
	dir := c.vmPath(name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	osName, cpuMin, memMin := "darwin", 4, int64(4<<30)
	if p.Has("--linux") {
		osName, cpuMin, memMin = "linux", 1, 512<<20
	}
	cfg := vmConfig{Version: 1, OS: osName, Arch: runtime.GOARCH, CPUCountMin: cpuMin, CPUCount: max(cpuMin, 2),
		MemorySizeMin: memMin, MemorySize: 4 << 30, MACAddress: randomMAC(),
		Display: map[string]any{"width": 1024, "height": 768}, DiskFormat: "raw"}
	disk := make([]byte, 0)
	if bytes > 0 { // some content, so layers differ
		disk = []byte("fake disk of " + name + "\n")
	}
	if err := os.WriteFile(filepath.Join(dir, "disk.img"), disk, 0o644); err != nil {
		return err
	}
	if err := os.Truncate(filepath.Join(dir, "disk.img"), bytes); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "nvram.bin"), []byte("nvram of "+name), 0o644); err != nil {
		return err
	}
	return c.writeConfig(dir, cfg)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func (c *cli) clone(args []string) error {
	p, err := parse(args, flag("--insecure"), option("--concurrency"), option("--prune-limit"))
	if err != nil {
		return err
	}
	if err := positional(p, "source-name", "new-name"); err != nil {
		return err
	}
	if n, err := uintOpt(p, "--concurrency", 4); err != nil {
		return err
	} else if n < 1 {
		return usageErr("network concurrency cannot be less than 1")
	}
	src, dst := p.Args[0], p.Args[1]
	if strings.Contains(dst, "/") || !localName.MatchString(dst) {
		return usageErr("%s should be a local name", dst)
	}
	var from string
	if ref, ok := parseRemote(src); ok {
		dir, err := c.cached(ref)
		if err != nil {
			if dir, err = c.pullRef(ref, p.Has("--insecure")); err != nil {
				return err
			}
		}
		from = dir
	} else {
		if !c.exists(src) {
			return notExist(src)
		}
		from = c.vmPath(src)
	}
	tmp := filepath.Join(c.home, "tmp", dst+"-"+strconv.Itoa(os.Getpid()))
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	for _, f := range []string{"config.json", "disk.img", "nvram.bin"} {
		if err := copyFile(filepath.Join(from, f), filepath.Join(tmp, f)); err != nil {
			return err
		}
	}
	os.MkdirAll(filepath.Join(c.home, "vms"), 0o755)
	os.RemoveAll(c.vmPath(dst)) // replaceItemAt: an existing VM is overwritten
	return os.Rename(tmp, c.vmPath(dst))
}

func (c *cli) set(args []string) error {
	p, err := parse(args, option("--cpu"), option("--memory"), option("--display"), flag("--display-refit"),
		flag("--no-display-refit"), flag("--random-mac"), flag("--random-serial"), option("--disk"), option("--disk-size"))
	if err != nil {
		return err
	}
	if err := positional(p, "name"); err != nil {
		return err
	}
	name := p.Args[0]
	if !c.exists(name) {
		return notExist(name)
	}
	dir := c.vmPath(name)
	cfg, err := c.readConfig(dir)
	if err != nil {
		return err
	}
	if p.Has("--cpu") {
		n, err := uintOpt(p, "--cpu", 0)
		if err != nil {
			return err
		}
		if n < cfg.CPUCountMin {
			return &exitError{1, fmt.Sprintf("LessThanMinimalResourcesError: VM should have %d CPU cores at minimum (requested %d)", cfg.CPUCountMin, n), true}
		}
		cfg.CPUCount = n
	}
	if p.Has("--memory") {
		n, err := uintOpt(p, "--memory", 0)
		if err != nil {
			return err
		}
		if int64(n)<<20 < cfg.MemorySizeMin {
			return &exitError{1, fmt.Sprintf("LessThanMinimalResourcesError: VM should have %d bytes of memory at minimum (requested %d)", cfg.MemorySizeMin, int64(n)<<20), true}
		}
		cfg.MemorySize = int64(n) << 20
	}
	if p.Has("--random-mac") {
		cfg.MACAddress = randomMAC()
	}
	if p.Has("--disk-size") {
		n, err := uintOpt(p, "--disk-size", 0)
		if err != nil {
			return err
		}
		st, _ := os.Stat(filepath.Join(dir, "disk.img"))
		if want := int64(n) * 1e9; want <= st.Size() {
			return runtimeErr(1, "new disk size of %d should be larger than the current disk size of %d", want, st.Size())
		} else if err := os.Truncate(filepath.Join(dir, "disk.img"), want); err != nil {
			return err
		}
	}
	return c.writeConfig(dir, cfg)
}

func state(c *cli, name string) string {
	if c.running(name) {
		return "running"
	}
	return "stopped"
}

func (c *cli) get(args []string) error {
	p, err := parse(args, option("--format"))
	if err != nil {
		return err
	}
	if err := positional(p, "name"); err != nil {
		return err
	}
	if f := p.Get("--format"); f != "" && f != "text" && f != "json" {
		return usageErr("The value '%s' is invalid for '--format <format>'", f)
	}
	name := p.Args[0]
	if !c.exists(name) {
		return notExist(name)
	}
	cfg, err := c.readConfig(c.vmPath(name))
	if err != nil {
		return err
	}
	st, _ := os.Stat(filepath.Join(c.vmPath(name), "disk.img"))
	out := map[string]any{"OS": cfg.OS, "CPU": cfg.CPUCount, "Memory": cfg.MemorySize >> 20,
		"Disk": st.Size() / 1e9, "DiskFormat": cfg.DiskFormat, "Size": fmt.Sprintf("%.3f", float64(st.Size())/1e9),
		"Display": fmt.Sprintf("%vx%v", cfg.Display["width"], cfg.Display["height"]),
		"Running": c.running(name), "State": state(c, name)}
	if p.Get("--format") == "json" {
		fmt.Fprintln(c.stdout, string(jsonIndent(out)))
		return nil
	}
	for _, k := range []string{"OS", "CPU", "Memory", "Disk", "DiskFormat", "Size", "Display", "State"} {
		fmt.Fprintf(c.stdout, "%-10s %v\n", k, out[k])
	}
	return nil
}

func (c *cli) list(args []string) error {
	p, err := parse(args, option("--source"), option("--format"), flag("-q", "--quiet"))
	if err != nil {
		return err
	}
	if err := positional(p); err != nil {
		return err
	}
	src := p.Get("--source")
	if src != "" && src != "local" && src != "oci" {
		return usageErr("'%s' is not a valid <source>", src)
	}
	type entry struct {
		Source   string
		Name     string
		Disk     int64
		Size     int64
		Accessed string
		Running  bool
		State    string
	}
	var out []entry
	if src != "oci" {
		for _, n := range c.localVMs() {
			st, _ := os.Stat(filepath.Join(c.vmPath(n), "disk.img"))
			out = append(out, entry{"local", n, st.Size() / 1e9, st.Size() / 1e9, st.ModTime().UTC().Format(time.RFC3339), c.running(n), state(c, n)})
		}
	}
	if src != "local" {
		for _, n := range c.cachedNames() {
			out = append(out, entry{"OCI", n, 0, 0, time.Now().UTC().Format(time.RFC3339), false, "stopped"})
		}
	}
	switch {
	case p.Get("--format") == "json":
		if out == nil {
			out = []entry{}
		}
		fmt.Fprintln(c.stdout, string(jsonIndent(out)))
	case p.Has("-q"):
		for _, e := range out {
			fmt.Fprintln(c.stdout, e.Name)
		}
	default:
		fmt.Fprintf(c.stdout, "%-6s %-40s %-4s %-4s %-20s %s\n", "Source", "Name", "Disk", "Size", "Accessed", "State")
		for _, e := range out {
			fmt.Fprintf(c.stdout, "%-6s %-40s %-4d %-4d %-20s %s\n", e.Source, e.Name, e.Disk, e.Size, e.Accessed, e.State)
		}
	}
	return nil
}

func (c *cli) ipFile(name string) string { return filepath.Join(c.vmPath(name), ".fake-ip") }
func (c *cli) pidFile(name string) string {
	return filepath.Join(c.vmPath(name), ".fake-pid")
}

func (c *cli) run(args []string) error {
	p, err := parse(args, flag("--no-graphics"), flag("--graphics"), flag("--serial"), option("--serial-path"),
		flag("--no-audio"), flag("--no-clipboard"), flag("--recovery"), flag("--vnc"), flag("--vnc-experimental"),
		repeated("--disk"), option("--rosetta"), repeated("--dir"), flag("--nested"), repeated("--net-bridged"),
		flag("--net-softnet"), option("--net-softnet-allow"), option("--net-softnet-block"), option("--net-softnet-expose"),
		flag("--net-host"), option("--root-disk-opts"), flag("--suspendable"), flag("--capture-system-keys"),
		flag("--no-trackpad"), flag("--no-pointer"), flag("--no-keyboard"))
	if err != nil {
		return err
	}
	if err := positional(p, "name"); err != nil {
		return err
	}
	switch {
	case p.Has("--vnc") && p.Has("--vnc-experimental"):
		return usageErr("--vnc and --vnc-experimental are mutually exclusive")
	case p.Has("--graphics") && p.Has("--no-graphics"):
		return usageErr("--graphics and --no-graphics are mutually exclusive")
	case boolCount(p.Has("--net-bridged"), p.Has("--net-softnet") || p.Has("--net-softnet-allow") || p.Has("--net-softnet-block") || p.Has("--net-softnet-expose"), p.Has("--net-host")) > 1:
		return usageErr("--net-bridged, --net-softnet and --net-host are mutually exclusive")
	case p.Has("--capture-system-keys") && (p.Has("--no-graphics") || p.Has("--vnc") || p.Has("--vnc-experimental")):
		return usageErr("--capture-system-keys can only be used with the default VM view")
	case p.Has("--nested"):
		return usageErr("nested virtualization is supported on hosts starting with macOS 15 (Sequoia), and M3 chip or higher")
	}
	name := p.Args[0]
	if !c.exists(name) { // run validates first: exit 1 with the Error: prefix
		return &exitError{1, fmt.Sprintf("the specified VM %q does not exist", name), true}
	}
	cfg, err := c.readConfig(c.vmPath(name))
	if err != nil {
		return err
	}
	f, err := os.Open(filepath.Join(c.vmPath(name), "config.json"))
	if err != nil {
		return err
	}
	defer f.Close()
	// Take the slot under the home lock: the VM limit and the lock together.
	unlock, err := fakecli.Lock(c.home)
	if err != nil {
		return err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		unlock()
		return runtimeErr(2, "VM %q is already running!", name)
	}
	var others []string
	usedIPs := map[string]bool{}
	for _, n := range c.localVMs() {
		if n != name && c.running(n) {
			if o, err := c.readConfig(c.vmPath(n)); err == nil && o.OS == "darwin" {
				others = append(others, n)
			}
			if ip, err := os.ReadFile(c.ipFile(n)); err == nil {
				usedIPs[strings.TrimSpace(string(ip))] = true
			}
		}
	}
	if cfg.OS == "darwin" && len(others) >= 2 {
		unlock()
		return runtimeErr(1, "The number of VMs exceeds the system limit (other running VMs: %s)", strings.Join(others, ", "))
	}
	ip := ""
	for n := 2; n < 255; n++ {
		if cand := "127.0.0." + strconv.Itoa(n); !usedIPs[cand] {
			ip = cand
			break
		}
	}
	srv, err := startSSH(ip, c.vmPath(name))
	if err != nil {
		unlock()
		return runtimeErr(1, "failed to start the VM: %v", err)
	}
	defer srv.Close()
	fakecli.WriteFileAtomic(c.pidFile(name), []byte(strconv.Itoa(os.Getpid())))
	fakecli.WriteFileAtomic(c.ipFile(name), []byte(ip+"\n"))
	unlock()
	defer os.Remove(c.ipFile(name))
	defer os.Remove(c.pidFile(name))
	if p.Has("--vnc") && (p.Has("--no-graphics") || os.Getenv("CI") != "") {
		fmt.Fprintf(c.stdout, "VNC server is running at vnc://%s\n", ip)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGUSR2)
	s := <-sig
	if s == syscall.SIGUSR2 {
		fmt.Fprintln(c.stdout, "Requesting guest OS to stop...")
	} else {
		fmt.Fprintln(c.stdout, "Stopping VM...")
	}
	return nil
}

func boolCount(bs ...bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

func (c *cli) ip(args []string) error {
	p, err := parse(args, option("--wait"), option("--resolver"))
	if err != nil {
		return err
	}
	if err := positional(p, "name"); err != nil {
		return err
	}
	if r := p.Get("--resolver"); r != "" && !slices.Contains([]string{"dhcp", "arp", "agent"}, r) {
		return usageErr("The value '%s' is invalid for '--resolver <resolver>'", r)
	}
	wait, err := uintOpt(p, "--wait", 0)
	if err != nil || wait > 65535 {
		return usageErr("The value '%s' is invalid for '--wait <wait>'", p.Get("--wait"))
	}
	name := p.Args[0]
	if !c.exists(name) {
		return notExist(name)
	}
	deadline := time.Now().Add(time.Duration(wait) * time.Second)
	for {
		if data, err := os.ReadFile(c.ipFile(name)); err == nil && c.running(name) {
			fmt.Fprint(c.stdout, string(data))
			return nil
		}
		time.Sleep(time.Second)
		if !time.Now().Before(deadline) {
			break
		}
	}
	msg := "no IP address found"
	if !c.running(name) {
		msg += ", is your VM running?"
	}
	return runtimeErr(1, "%s", msg)
}

func (c *cli) stop(args []string) error {
	p, err := parse(args, option("-t", "--timeout"))
	if err != nil {
		return err
	}
	if err := positional(p, "name"); err != nil {
		return err
	}
	timeout, err := uintOpt(p, "-t", 30)
	if err != nil {
		return err
	}
	name := p.Args[0]
	if !c.exists(name) {
		return notExist(name)
	}
	if !c.running(name) {
		return runtimeErr(2, "VM %q is not running", name)
	}
	data, _ := os.ReadFile(c.pidFile(name))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	if pid > 0 {
		syscall.Kill(pid, syscall.SIGINT)
	}
	deadline := time.Now().Add(time.Duration(timeout) * time.Second)
	for c.running(name) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if c.running(name) && pid > 0 {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			return runtimeErr(1, "failed to forcefully terminate the VM %q: %v", name, err)
		}
		for c.running(name) {
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

func (c *cli) delete(args []string) error {
	p, err := parse(args)
	if err != nil {
		return err
	}
	if len(p.Args) == 0 {
		return usageErr("Missing expected argument '<name> ...'")
	}
	for _, name := range p.Args {
		if ref, ok := parseRemote(name); ok {
			if err := c.uncache(ref); err != nil {
				return err
			}
			continue
		}
		if !c.exists(name) {
			return notExist(name)
		}
		if c.running(name) {
			return runtimeErr(1, "VM %q is running", name)
		}
		if err := os.RemoveAll(c.vmPath(name)); err != nil {
			return err
		}
	}
	return nil
}
