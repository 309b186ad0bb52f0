// Package fakeanka is a strict stand-in for the Anka 3 `anka` CLI, following
// ../shared/spec/drivers.md part A: global options before the command,
// options before positional arguments, one JSON envelope per call in -j
// mode, error code 3 for an unknown VM and 18 for an existing name, delete
// without --yes declined, licence limits (Develop: one running VM, no
// export). State lives under $FAKE_ANKA_HOME (one JSON file per VM).
//
// `anka run` runs the guest command on this host, in the VM's directory,
// with the command's stdin, output and exit status.
package fakeanka

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/corral-build/corral/internal/fakecli"
)

// Tool is the fake for fakecli.Dispatch and Install.
var Tool = fakecli.Tool{Name: "anka", Main: Main}

// Licences, as `anka license show` names them.
const (
	Develop = "com.veertu.anka.develop"
	Run     = "com.veertu.anka.run"
	EntPlus = "com.veertu.anka.entplus"
)

// Rule is a port forwarding rule.
type Rule struct {
	Name      string `json:"name"`
	Protocol  string `json:"protocol"`
	GuestPort int    `json:"guest_port"`
	HostPort  int    `json:"host_port,omitempty"`
	HostIP    string `json:"host_ip,omitempty"`
}

// VM is one VM's state file.
type VM struct {
	UUID      string    `json:"uuid"`
	Name      string    `json:"name"`
	Version   string    `json:"version,omitempty"`
	Created   time.Time `json:"creation_date"`
	Status    string    `json:"status"`
	CPU       int       `json:"cpu_cores"`
	RAMSize   int64     `json:"ram_size"`
	Disk      int64     `json:"hard_drive"`
	Rules     []Rule    `json:"rules"`
	IP        string    `json:"ip,omitempty"`
	VNCPort   int       `json:"vnc_port,omitempty"`
	Exported  string    `json:"exported_from,omitempty"`
	ImageData string    `json:"image,omitempty"` // stands in for the disk
}

type failure struct {
	code int
	msg  string
}

func (f *failure) Error() string { return f.msg }

func fail(code int, format string, a ...any) error {
	return &failure{code, fmt.Sprintf(format, a...)}
}

const (
	codeGeneric  = 1
	codeNotFound = 3
	codeExists   = 18
)

type state struct {
	home   string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

// Main runs one anka command line.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	home := os.Getenv("FAKE_ANKA_HOME")
	if home == "" {
		fmt.Fprintln(stderr, "fake anka: FAKE_ANKA_HOME is not set")
		return 1
	}
	if f := os.Getenv("FAKE_ANKA_LOG"); f != "" {
		if lf, err := os.OpenFile(f, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			fmt.Fprintln(lf, strings.Join(args, " "))
			lf.Close()
		}
	}
	s := &state{home: home, stdin: stdin, stdout: stdout, stderr: stderr}
	global, err := fakecli.Parse(args, []fakecli.Option{
		{Names: []string{"-j", "--machine-readable"}}, {Names: []string{"--debug"}}, {Names: []string{"--version"}},
	}, true, 1, false)
	jsonOut := global.Has("-j") || os.Getenv("ANKA_MACHINE_READABLE") != ""
	if err == nil && global.Has("--version") {
		return s.reply(jsonOut, map[string]string{"product": "Anka Build Basic", "version": "3.9.1", "build": "999"}, "", nil)
	}
	if err == nil && len(global.Args) == 0 {
		err = fail(codeGeneric, "usage: anka [options] <command> ...")
	}
	if err != nil {
		return s.reply(jsonOut, nil, "", err)
	}
	cmd, rest := global.Args[0], global.Args[1:]
	if cmd == "run" { // output is the guest command's own
		return s.run(rest)
	}
	unlock, err := fakecli.Lock(home)
	if err != nil {
		return s.reply(jsonOut, nil, "", err)
	}
	defer unlock()
	body, msg, err := s.command(cmd, rest)
	return s.reply(jsonOut, body, msg, err)
}

func (s *state) reply(jsonOut bool, body any, msg string, err error) int {
	code := 0
	if err != nil {
		code = codeGeneric
		var f *failure
		var u *fakecli.UsageError
		switch {
		case errors.As(err, &f):
			code = f.code
		case errors.As(err, &u):
		}
		if jsonOut {
			out, _ := json.Marshal(map[string]any{"status": "ERROR", "code": code, "message": err.Error(), "exception_type": "AnkaException"})
			fmt.Fprintln(s.stdout, string(out))
		} else {
			fmt.Fprintf(s.stderr, "anka: %s\n", err)
		}
		return 1
	}
	if body == nil {
		body = map[string]any{}
	}
	if jsonOut {
		out, _ := json.Marshal(map[string]any{"status": "OK", "code": 0, "body": body, "message": msg})
		fmt.Fprintln(s.stdout, string(out))
	} else if msg != "" {
		fmt.Fprintln(s.stdout, msg)
	} else if str, ok := body.(string); ok {
		fmt.Fprintln(s.stdout, str)
	}
	return 0
}

func (s *state) vmDir() string { return filepath.Join(s.home, "vms") }

func (s *state) load() ([]VM, error) {
	entries, err := os.ReadDir(s.vmDir())
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	var vms []VM
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(s.vmDir(), e.Name()))
		if err != nil {
			return nil, err
		}
		var vm VM
		if err := json.Unmarshal(data, &vm); err != nil {
			return nil, fmt.Errorf("fake anka state %s: %w", e.Name(), err)
		}
		vms = append(vms, vm)
	}
	slices.SortFunc(vms, func(a, b VM) int { return strings.Compare(a.Name, b.Name) })
	return vms, nil
}

func (s *state) save(vm VM) error {
	if err := os.MkdirAll(s.vmDir(), 0o755); err != nil {
		return err
	}
	data, _ := json.MarshalIndent(vm, "", "  ")
	return fakecli.WriteFileAtomic(filepath.Join(s.vmDir(), vm.UUID+".json"), data)
}

func (s *state) remove(vm VM) error {
	os.RemoveAll(filepath.Join(s.vmDir(), vm.UUID))
	return os.Remove(filepath.Join(s.vmDir(), vm.UUID+".json"))
}

// find resolves a vmid (name or UUID).
func (s *state) find(id string) (VM, error) {
	vms, err := s.load()
	if err != nil {
		return VM{}, err
	}
	for _, vm := range vms {
		if vm.UUID == id || vm.Name == id {
			return vm, nil
		}
	}
	return VM{}, fail(codeNotFound, "%s: not found", id)
}

func (s *state) nameFree(name string) error {
	if _, err := s.find(name); err == nil {
		return fail(codeExists, "%s: already exists", name)
	}
	return nil
}

func newUUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func licence() string {
	if l := os.Getenv("FAKE_ANKA_LICENSE"); l != "" {
		return l
	}
	return EntPlus
}

func opt(names ...string) fakecli.Option { return fakecli.Option{Names: names} }
func val(names ...string) fakecli.Option { return fakecli.Option{Names: names, Value: true} }
func multi(names ...string) fakecli.Option {
	return fakecli.Option{Names: names, Value: true, Multi: true}
}

func parse(args []string, opts ...fakecli.Option) (fakecli.Parsed, error) {
	return fakecli.Parse(args, opts, true, 0, false)
}

func nargs(p fakecli.Parsed, min, max int, usage string) error {
	if len(p.Args) < min {
		return fail(codeGeneric, "missing argument: usage: anka %s", usage)
	}
	if max >= 0 && len(p.Args) > max {
		return fail(codeGeneric, "unexpected argument %q: usage: anka %s", p.Args[max], usage)
	}
	return nil
}

// command runs everything but `run`; it holds the state lock.
func (s *state) command(cmd string, args []string) (any, string, error) {
	switch cmd {
	case "version":
		if err := nargs(fakecli.Parsed{Args: args}, 0, 0, "version"); err != nil {
			return nil, "", err
		}
		return map[string]string{"product": "Anka Build Basic", "version": "3.9.1", "build": "999"}, "", nil
	case "license":
		if len(args) != 1 || args[0] != "show" {
			return nil, "", fail(codeGeneric, "usage: anka license show|activate|validate|remove|accept-eula")
		}
		return map[string]string{"status": "valid", "license_type": licence(), "product": "Anka"}, "", nil
	case "list":
		return s.list(args)
	case "show":
		return s.show(args)
	case "create":
		return s.create(args)
	case "clone":
		return s.clone(args)
	case "modify":
		return s.modify(args)
	case "start":
		return s.start(args)
	case "stop":
		return s.stop(args)
	case "delete":
		return s.delete(args)
	case "export":
		return s.export(args)
	case "import":
		return s.importVM(args)
	case "registry":
		if slices.Contains(args, "list-repos") {
			return nil, "", fail(codeGeneric, "unknown command 'list-repos' (removed in 3.9: use registry --list)")
		}
		return nil, "", fail(codeGeneric, "the fake anka has no registry")
	}
	return nil, "", fail(codeGeneric, "unknown command '%s'", cmd)
}

func listItem(vm VM) map[string]any {
	m := map[string]any{"name": vm.Name, "uuid": vm.UUID, "creation_date": vm.Created.Format(time.RFC3339), "status": vm.Status}
	if vm.Version != "" {
		m["version"] = vm.Version
	}
	return m
}

func (s *state) list(args []string) (any, string, error) {
	p, err := parse(args, opt("-r", "--running"), opt("-s", "--stopped"), opt("-a", "--all"), multi("-f", "--field"))
	if err != nil {
		return nil, "", err
	}
	vms, err := s.load()
	if err != nil {
		return nil, "", err
	}
	out := []map[string]any{}
	for _, vm := range vms {
		if len(p.Args) > 0 && !slices.Contains(p.Args, vm.Name) && !slices.Contains(p.Args, vm.UUID) {
			continue
		}
		if (p.Has("-r") && vm.Status != "running") || (p.Has("-s") && vm.Status != "stopped") {
			continue
		}
		out = append(out, listItem(vm))
	}
	for _, id := range p.Args {
		if !slices.ContainsFunc(vms, func(vm VM) bool { return vm.Name == id || vm.UUID == id }) {
			return nil, "", fail(codeNotFound, "%s: not found", id)
		}
	}
	return out, "", nil
}

func showBody(vm VM) map[string]any {
	m := map[string]any{
		"uuid": vm.UUID, "name": vm.Name, "creation_date": vm.Created.Format(time.RFC3339),
		"cpu_cores": vm.CPU, "cpu_frequency": 0, "cpu_htt": false, "arch": 2,
		"ram": strconv.FormatInt(vm.RAMSize, 10), "ram_size": vm.RAMSize, "frame_buffers": 1,
		"hard_drive": vm.Disk, "encrypted": false, "image_size": len(vm.ImageData),
		"addons_version": "3.9.1.999", "status": vm.Status,
	}
	if vm.Version != "" {
		m["version"] = vm.Version
	}
	if vm.Status == "running" {
		m["ip"], m["vnc_port"] = vm.IP, vm.VNCPort
		m["access_date"] = time.Now().UTC().Format(time.RFC3339)
	}
	return m
}

func networkBody(vm VM) map[string]any {
	rules := []map[string]any{}
	for _, r := range vm.Rules {
		m := map[string]any{"name": r.Name, "protocol": r.Protocol, "guest_port": r.GuestPort}
		if vm.Status == "running" && r.HostPort > 0 {
			m["host_port"] = r.HostPort
		}
		rules = append(rules, m)
	}
	return map[string]any{"mode": "shared", "controller": "virtio-net", "port_forwarding_rules": rules}
}

func (s *state) show(args []string) (any, string, error) {
	p, err := parse(args, val("-t", "--tag"))
	if err != nil {
		return nil, "", err
	}
	if err := nargs(p, 1, 3, "show [-t|--tag T] vmid [sub] [field]"); err != nil {
		return nil, "", err
	}
	vm, err := s.find(p.Args[0])
	if err != nil {
		return nil, "", err
	}
	if len(p.Args) == 1 {
		return showBody(vm), "", nil
	}
	switch p.Args[1] {
	case "network":
		if len(p.Args) == 3 {
			if p.Args[2] == "ip" {
				return vm.IP, "", nil
			}
			return nil, "", fail(codeGeneric, "unknown field '%s'", p.Args[2])
		}
		return networkBody(vm), "", nil
	case "name", "uuid", "cpu", "ram":
		b := showBody(vm)
		key := map[string]string{"name": "name", "uuid": "uuid", "cpu": "cpu_cores", "ram": "ram"}[p.Args[1]]
		return b[key], "", nil
	}
	return nil, "", fail(codeGeneric, "unknown show subcommand '%s'", p.Args[1])
}

func (s *state) create(args []string) (any, string, error) {
	p, err := parse(args, val("-m", "--ram-size"), val("-c", "--cpu-count"), val("-d", "--disk-size"),
		opt("--no-setup"), opt("-q"), opt("-l", "--list"))
	if err != nil {
		return nil, "", err
	}
	if err := nargs(p, 2, 2, "create [options] NAME VERSION|INSTALLER|URL"); err != nil {
		return nil, "", err
	}
	if err := s.nameFree(p.Args[0]); err != nil {
		return nil, "", err
	}
	vm := VM{UUID: newUUID(), Name: p.Args[0], Created: time.Now().UTC(), Status: "stopped", CPU: 4,
		RAMSize: 4 << 30, Disk: 128 << 30, ImageData: "macOS " + p.Args[1]}
	if c := p.Get("-c"); c != "" {
		if vm.CPU, err = strconv.Atoi(c); err != nil || vm.CPU < 1 {
			return nil, "", fail(codeGeneric, "invalid cpu count '%s'", c)
		}
	}
	if m := p.Get("-m"); m != "" {
		if vm.RAMSize, err = parseSize(m); err != nil {
			return nil, "", err
		}
	}
	// Since 3.1 setup enables SSH: the VM comes with no rules, though.
	return map[string]string{"uuid": vm.UUID}, "", s.save(vm)
}

func (s *state) clone(args []string) (any, string, error) {
	p, err := parse(args, opt("-c", "--copy"), val("-t", "--tag"))
	if err != nil {
		return nil, "", err
	}
	if err := nargs(p, 2, -1, "clone [-c|--copy] [-t|--tag T] vmid name..."); err != nil {
		return nil, "", err
	}
	src, err := s.find(p.Args[0])
	if err != nil {
		return nil, "", err
	}
	var uuids []string
	for _, name := range p.Args[1:] {
		if err := s.nameFree(name); err != nil {
			return nil, "", err
		}
		vm := src
		vm.UUID, vm.Name, vm.Status, vm.Created, vm.Version = newUUID(), name, "stopped", time.Now().UTC(), ""
		vm.IP, vm.VNCPort = "", 0
		vm.Rules = slices.Clone(src.Rules)
		for i := range vm.Rules {
			vm.Rules[i].HostPort = 0
		}
		if err := s.save(vm); err != nil {
			return nil, "", err
		}
		uuids = append(uuids, vm.UUID)
	}
	return map[string]any{"uuid": uuids[0]}, "", nil
}

func parseSize(v string) (int64, error) {
	mult := map[byte]int64{'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}
	if v == "" {
		return 0, fail(codeGeneric, "missing size")
	}
	m, ok := mult[v[len(v)-1]]
	num := v
	if ok {
		num = v[:len(v)-1]
	} else {
		m = 1
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 {
		return 0, fail(codeGeneric, "invalid size '%s' (want a number with T, G, M or K)", v)
	}
	return n * m, nil
}

func (s *state) modify(args []string) (any, string, error) {
	if len(args) < 2 {
		return nil, "", fail(codeGeneric, "missing argument: usage: anka modify vmid <sub> ...")
	}
	if strings.HasPrefix(args[0], "-") {
		return nil, "", fail(codeGeneric, "unknown option '%s'", args[0])
	}
	vm, err := s.find(args[0])
	if err != nil {
		return nil, "", err
	}
	sub, rest := args[1], args[2:]
	if (sub == "cpu" || sub == "ram" || sub == "disk") && vm.Status == "running" {
		return nil, "", fail(codeGeneric, "%s: cannot modify %s of a running VM", vm.Name, sub)
	}
	switch sub {
	case "cpu":
		p, err := parse(rest, val("-c", "--cores"), val("-f", "--frequency"))
		if err != nil {
			return nil, "", err
		}
		if err := nargs(p, 0, 1, "modify vmid cpu [-c N] [-f HZ] [N]"); err != nil {
			return nil, "", err
		}
		n := p.Get("-c")
		if len(p.Args) == 1 {
			n = p.Args[0]
		}
		if vm.CPU, err = strconv.Atoi(n); err != nil || vm.CPU < 1 {
			return nil, "", fail(codeGeneric, "invalid cpu count '%s'", n)
		}
	case "ram":
		p, err := parse(rest)
		if err != nil {
			return nil, "", err
		}
		if err := nargs(p, 1, 1, "modify vmid ram SIZE"); err != nil {
			return nil, "", err
		}
		if vm.RAMSize, err = parseSize(p.Args[0]); err != nil {
			return nil, "", err
		}
	case "name":
		p, err := parse(rest)
		if err != nil {
			return nil, "", err
		}
		if err := nargs(p, 1, 1, "modify vmid name NEW"); err != nil {
			return nil, "", err
		}
		if err := s.nameFree(p.Args[0]); err != nil {
			return nil, "", err
		}
		vm.Name = p.Args[0]
	case "port":
		p, err := parse(rest, opt("-r", "--reverse"), opt("-d", "--delete"), val("--set-name"))
		if err != nil {
			return nil, "", err
		}
		if p.Has("-d") {
			if err := nargs(p, 1, 1, "modify vmid port -d NAME"); err != nil {
				return nil, "", err
			}
			i := slices.IndexFunc(vm.Rules, func(r Rule) bool { return r.Name == p.Args[0] })
			if i < 0 {
				return nil, "", fail(codeNotFound, "port forwarding rule %s: not found", p.Args[0])
			}
			vm.Rules = slices.Delete(vm.Rules, i, i+1)
			break
		}
		if err := nargs(p, 2, 2, "modify vmid port [-r] [-d] [--set-name NEW] NAME [GUESTPORT[:HOSTIP][:HOSTPORT]]"); err != nil {
			return nil, "", err
		}
		name := p.Args[0]
		parts := strings.Split(p.Args[1], ":")
		gp, err := strconv.Atoi(parts[0])
		if err != nil || gp < 1 || gp > 65535 || len(parts) > 3 {
			return nil, "", fail(codeGeneric, "invalid port rule '%s' (want GUESTPORT[:HOSTIP][:HOSTPORT])", p.Args[1])
		}
		r := Rule{Name: name, Protocol: "tcp", GuestPort: gp}
		if len(parts) > 1 {
			r.HostIP = parts[1]
		}
		if len(parts) > 2 {
			if r.HostPort, err = strconv.Atoi(parts[2]); err != nil {
				return nil, "", fail(codeGeneric, "invalid host port '%s'", parts[2])
			}
		}
		for _, x := range vm.Rules {
			if x.Name == name {
				return nil, "", fail(codeExists, "port forwarding rule %s already exists", name)
			}
			if x.GuestPort == gp {
				return nil, "", fail(codeExists, "guest port %d is already forwarded (rule %s)", gp, x.Name)
			}
		}
		vm.Rules = append(vm.Rules, r)
	default:
		return nil, "", fail(codeGeneric, "unknown modify subcommand '%s'", sub)
	}
	return nil, "", s.save(vm)
}

func (s *state) start(args []string) (any, string, error) {
	p, err := parse(args, opt("-f", "--force"), val("--login-passwd"), opt("-q"), opt("-v", "--view"),
		opt("-u", "--update-addons"), multi("--mount"), opt("--disable-auto-mount"))
	if err != nil {
		return nil, "", err
	}
	if err := nargs(p, 1, 1, "start [options] vmid"); err != nil {
		return nil, "", err
	}
	vm, err := s.find(p.Args[0])
	if err != nil {
		return nil, "", err
	}
	if vm.Status == "running" {
		return showBody(vm), "", nil
	}
	if vm.Status == "failed" {
		return nil, "", fail(codeGeneric, "%s: failed to start: the VM is in failed state (anka stop --force first)", vm.Name)
	}
	vms, err := s.load()
	if err != nil {
		return nil, "", err
	}
	running, used := 0, map[int]bool{}
	ips := map[string]bool{}
	for _, o := range vms {
		if o.Status == "running" {
			running++
			ips[o.IP] = true
			for _, r := range o.Rules {
				used[r.HostPort] = true
			}
		}
	}
	if licence() == Develop && running >= 1 {
		return nil, "", fail(codeGeneric, "%s: failed to start: the Develop license allows one running VM", vm.Name)
	}
	if running >= 2 {
		return nil, "", fail(codeGeneric, "%s: failed to start: maximum number of running instances exceeded", vm.Name)
	}
	for n := 2; n < 255; n++ {
		if ip := "192.168.64." + strconv.Itoa(n); !ips[ip] {
			vm.IP = ip
			break
		}
	}
	port := 10000
	for i := range vm.Rules {
		if vm.Rules[i].HostPort == 0 {
			for used[port] {
				port++
			}
			vm.Rules[i].HostPort = port
			used[port] = true
		}
	}
	vm.VNCPort = 5900
	vm.Status = "running"
	if err := s.save(vm); err != nil {
		return nil, "", err
	}
	return showBody(vm), "", nil
}

func (s *state) selected(p fakecli.Parsed, usage string) ([]VM, error) {
	if p.Has("-a") {
		return s.load()
	}
	if err := nargs(p, 1, -1, usage); err != nil {
		return nil, err
	}
	var vms []VM
	for _, id := range p.Args {
		vm, err := s.find(id)
		if err != nil {
			return nil, err
		}
		vms = append(vms, vm)
	}
	return vms, nil
}

func (s *state) stop(args []string) (any, string, error) {
	p, err := parse(args, opt("-a", "--all"), opt("-f", "--force"))
	if err != nil {
		return nil, "", err
	}
	vms, err := s.selected(p, "stop [-a|--all] [-f|--force] [vmid...]")
	if err != nil {
		return nil, "", err
	}
	for _, vm := range vms {
		if vm.Status == "failed" && !p.Has("-f") {
			return nil, "", fail(codeGeneric, "%s: VM is in failed state, use --force", vm.Name)
		}
		vm.Status, vm.IP, vm.VNCPort = "stopped", "", 0
		for i := range vm.Rules {
			vm.Rules[i].HostPort = 0
		}
		if err := s.save(vm); err != nil {
			return nil, "", err
		}
	}
	return nil, "", nil
}

func (s *state) delete(args []string) (any, string, error) {
	p, err := parse(args, opt("-a", "--all"), val("-t", "--tag"), opt("--yes"), opt("--cache"))
	if err != nil {
		return nil, "", err
	}
	vms, err := s.selected(p, "delete [-a|--all] [-t|--tag T] [--yes] [--cache] [vmid...]")
	if err != nil {
		return nil, "", err
	}
	if !p.Has("--yes") {
		// The real CLI prompts; with no TTY to answer, the fake declines.
		fmt.Fprintf(s.stderr, "are you sure you want to delete vm %s %s [y/N]: \n", vms[0].UUID, vms[0].Name)
		return nil, "", fail(codeGeneric, "delete declined (no --yes and no answer)")
	}
	for _, vm := range vms {
		if err := s.remove(vm); err != nil {
			return nil, "", err
		}
	}
	return nil, "", nil
}

// export writes the VM to FILE (an Enterprise feature). The fake's format is
// its state record; the real one is an archive of the VM's files.
func (s *state) export(args []string) (any, string, error) {
	p, err := parse(args, val("-t", "--tag"), opt("-c", "--copy"))
	if err != nil {
		return nil, "", err
	}
	if err := nargs(p, 2, 2, "export [-t TAG] [-c|--copy] vmid FILE"); err != nil {
		return nil, "", err
	}
	if licence() != EntPlus {
		return nil, "", fail(codeGeneric, "export requires an Enterprise license (this host has %s)", licence())
	}
	vm, err := s.find(p.Args[0])
	if err != nil {
		return nil, "", err
	}
	if vm.Status == "running" {
		return nil, "", fail(codeGeneric, "%s: cannot export a running VM", vm.Name)
	}
	vm.Exported, vm.Status = vm.UUID, "stopped"
	data, _ := json.Marshal(vm)
	if err := os.WriteFile(p.Args[1], append([]byte("ANKAEXPORT\n"), data...), 0o644); err != nil {
		return nil, "", fail(codeGeneric, "export %s: %v", p.Args[1], err)
	}
	return nil, "", nil
}

// importVM reads an export from FILE, or stdin without one. The VM keeps the
// exported name and UUID: there is no --name.
func (s *state) importVM(args []string) (any, string, error) {
	p, err := parse(args, opt("--fetch-only"))
	if err != nil {
		return nil, "", err
	}
	if err := nargs(p, 0, 1, "import [--fetch-only] [FILE]"); err != nil {
		return nil, "", err
	}
	if licence() != EntPlus {
		return nil, "", fail(codeGeneric, "import requires an Enterprise license (this host has %s)", licence())
	}
	var data []byte
	if len(p.Args) == 1 {
		data, err = os.ReadFile(p.Args[0])
	} else {
		data, err = io.ReadAll(s.stdin)
	}
	if err != nil {
		return nil, "", fail(codeGeneric, "import: %v", err)
	}
	body, ok := strings.CutPrefix(string(data), "ANKAEXPORT\n")
	var vm VM
	if !ok || json.Unmarshal([]byte(body), &vm) != nil || vm.UUID == "" {
		return nil, "", fail(codeGeneric, "import: not an anka export")
	}
	if err := s.nameFree(vm.Name); err != nil {
		return nil, "", err
	}
	if err := s.nameFree(vm.UUID); err != nil {
		return nil, "", err
	}
	vm.Status, vm.Created = "stopped", time.Now().UTC()
	return nil, "", s.save(vm)
}

// run runs the guest command (the VM is started first if it is stopped).
func (s *state) run(args []string) int {
	p, err := fakecli.Parse(args, []fakecli.Option{val("-w", "-D", "--workdir"), opt("-E"), multi("-e"),
		val("-f", "--env-file"), opt("-q", "--quiet"), opt("-b", "--background")}, true, 1, false)
	if err == nil && len(p.Args) < 2 {
		err = fail(codeGeneric, "missing argument: usage: anka run [options] vmid cmd [args...]")
	}
	if err != nil {
		fmt.Fprintf(s.stderr, "anka: %s\n", err)
		return 1
	}
	unlock, err := fakecli.Lock(s.home)
	if err != nil {
		fmt.Fprintln(s.stderr, err)
		return 1
	}
	vm, err := s.find(p.Args[0])
	if err == nil && vm.Status != "running" {
		_, _, err = s.start([]string{vm.UUID})
	}
	unlock()
	if err != nil {
		fmt.Fprintf(s.stderr, "anka: %s\n", err)
		return 1
	}
	dir := filepath.Join(s.vmDir(), vm.UUID)
	os.MkdirAll(dir, 0o755)
	cmd := exec.Command(p.Args[1], p.Args[2:]...)
	cmd.Dir, cmd.Stdin, cmd.Stdout, cmd.Stderr = dir, s.stdin, s.stdout, s.stderr
	if err := cmd.Run(); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode()
		}
		fmt.Fprintf(s.stderr, "anka: %s: %v\n", vm.Name, err)
		return 125
	}
	return 0
}
