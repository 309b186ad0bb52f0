package anka

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/driver"
	"github.com/corral-build/corral/internal/driver/drivertest"
	"github.com/corral-build/corral/internal/fakecli"
	"github.com/corral-build/corral/internal/fakecli/fakeanka"
)

func TestMain(m *testing.M) {
	fakecli.Dispatch(fakeanka.Tool)
	os.Exit(m.Run())
}

type env struct {
	bin, log, home string
}

// fake installs the strict fake anka and returns its paths.
func fake(t *testing.T) env {
	t.Helper()
	dir := t.TempDir()
	if err := fakecli.Install(dir, "anka"); err != nil {
		t.Fatal(err)
	}
	e := env{bin: filepath.Join(dir, "anka"), log: filepath.Join(dir, "log"), home: filepath.Join(dir, "home")}
	t.Setenv("FAKE_ANKA_HOME", e.home)
	t.Setenv("FAKE_ANKA_LOG", e.log)
	return e
}

// anka runs the fake by hand (test setup, not under test).
func (e env) anka(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(e.bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("anka %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// template makes an export file the way a template is made for Corral:
// create a VM, export it, delete the original. rules are added first.
func (e env) template(t *testing.T, rules ...string) string {
	t.Helper()
	e.anka(t, "create", "base", "15.3")
	for _, r := range rules {
		name, port, _ := strings.Cut(r, "=")
		e.anka(t, "modify", "base", "port", name, port)
	}
	dir := t.TempDir()
	e.anka(t, "export", "base", filepath.Join(dir, "macos.ankabundle"))
	e.anka(t, "delete", "--yes", "base")
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{}`), 0o644)
	os.Remove(e.log)
	return dir
}

func (e env) driver(t *testing.T) *Driver {
	t.Helper()
	d, err := New(Config{Binary: e.bin, PollInterval: 100 * time.Millisecond, BootTimeout: 5 * time.Second,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(e.log)
	return d
}

func (e env) commands(t *testing.T) []string {
	data, _ := os.ReadFile(e.log)
	return strings.Split(strings.TrimSpace(string(data)), "\n")
}

func (e env) vms(t *testing.T) []string {
	var env struct {
		Body []struct{ Name string } `json:"body"`
	}
	json.Unmarshal([]byte(e.anka(t, "-j", "list")), &env)
	var names []string
	for _, v := range env.Body {
		names = append(names, v.Name)
	}
	return names
}

func TestLifecycleCommandLines(t *testing.T) {
	e := fake(t)
	tmplDir := e.template(t)
	d := e.driver(t)
	ctx := context.Background()
	spec := driver.Spec{InstanceID: "i1", VMID: "t1", Tag: "v1", TemplateDir: tmplDir, VCPU: 6, VRAMMB: 8192, HostIP: "10.1.1.1", NodeID: "n1"}
	m, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	info := m.Info()
	if info.IP == "" || len(info.PortForwarding) == 0 || info.PortForwarding[0].GuestPort != 22 || info.PortForwarding[0].HostPort < 10000 ||
		info.VNCPort != 5900 || info.HostIP != "10.1.1.1" || info.Status != "running" || info.CPUCores != 6 || info.RAM != "8G" {
		t.Fatalf("vminfo %+v", info)
	}
	res, err := m.RunScript(ctx, []byte("echo hi; exit 3"))
	if err != nil || res.Stdout != "hi\n" || res.ReturnCode != 3 {
		t.Fatalf("script %+v %v", res, err)
	}
	// A second instance of the same template reuses the import.
	m2, err := d.Start(ctx, driver.Spec{InstanceID: "i2", VMID: "t1", Tag: "v1", TemplateDir: tmplDir})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m2.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"--machine-readable show corral-tmpl-t1-v1",
		"--machine-readable list",
		"--machine-readable import " + filepath.Join(tmplDir, "macos.ankabundle"),
		"--machine-readable list",
		"--machine-readable modify <uuid> name corral-tmpl-t1-v1",
		"--machine-readable clone corral-tmpl-t1-v1 corral-vm-i1",
		"--machine-readable modify corral-vm-i1 cpu 6",
		"--machine-readable modify corral-vm-i1 ram 8192M",
		"--machine-readable show corral-vm-i1 network",
		"--machine-readable modify corral-vm-i1 port ssh 22",
		"--machine-readable start corral-vm-i1",
		"--machine-readable show corral-vm-i1",
		"run corral-vm-i1 /bin/sh -s",
		"--machine-readable show corral-tmpl-t1-v1",
		"--machine-readable clone corral-tmpl-t1-v1 corral-vm-i2",
		"--machine-readable show corral-vm-i2 network",
		"--machine-readable modify corral-vm-i2 port ssh 22",
		"--machine-readable start corral-vm-i2",
		"--machine-readable show corral-vm-i2",
		"--machine-readable stop --force corral-vm-i1",
		"--machine-readable delete --yes corral-vm-i1",
		"--machine-readable stop --force corral-vm-i2",
		"--machine-readable delete --yes corral-vm-i2",
	}
	var got []string
	for _, c := range e.commands(t) {
		f := strings.Fields(c)
		if len(f) == 5 && f[1] == "modify" && f[3] == "name" {
			f[2] = "<uuid>"
			c = strings.Join(f, " ")
		}
		// The watchers' periodic shows vary in number.
		if !strings.HasPrefix(c, "--machine-readable show corral-vm-") || !contains(got, c) {
			got = append(got, c)
		}
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("command lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if vms := e.vms(t); len(vms) != 1 || vms[0] != "corral-tmpl-t1-v1" {
		t.Fatalf("VMs left: %v", vms)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// The command lines the driver used before it followed the reference: the
// strict fake refuses them, as the real CLI does.
func TestFakeRejectsWrongCommandLines(t *testing.T) {
	e := fake(t)
	tmplDir := e.template(t)
	e.anka(t, "create", "vm1", "15.3")
	for _, args := range [][]string{
		{"--machine-readable", "import", filepath.Join(tmplDir, "macos.ankabundle"), "--name", "corral-t1-v1"},
		{"--machine-readable", "modify", "vm1", "port", "--guest-port", "22", "ssh"},
		{"--machine-readable", "start"},
		{"start", "--machine-readable", "vm1"},
		{"--machine-readable", "delete", "vm1"}, // no --yes: declined, nothing deleted
		{"--machine-readable", "show", "nope"},
		{"--machine-readable", "clone", "vm1", "vm1"},
		{"--machine-readable", "stop", "vm1", "--force"},
	} {
		out, err := exec.Command(e.bin, args...).Output()
		if err == nil {
			t.Errorf("anka %s: accepted (%s)", strings.Join(args, " "), out)
			continue
		}
		if args[0] == "--machine-readable" && !strings.Contains(string(out), `"status":"ERROR"`) {
			t.Errorf("anka %s: no ERROR envelope: %s", strings.Join(args, " "), out)
		}
	}
	if vms := e.vms(t); !contains(vms, "vm1") {
		t.Fatalf("delete without --yes deleted: %v", vms)
	}
	out, _ := exec.Command(e.bin, "-j", "show", "nope").Output()
	if !strings.Contains(string(out), `"code":3`) {
		t.Fatalf("not found: %s", out)
	}
	out, _ = exec.Command(e.bin, "-j", "clone", "vm1", "vm1").Output()
	if !strings.Contains(string(out), `"code":18`) {
		t.Fatalf("exists: %s", out)
	}
}

// A template whose VM already forwards guest port 22 keeps its rule: adding
// another one is refused by anka.
func TestTemplateWithSSHRule(t *testing.T) {
	e := fake(t)
	tmplDir := e.template(t, "ssh=22", "web=8080")
	d := e.driver(t)
	m, err := d.Start(context.Background(), driver.Spec{InstanceID: "i1", VMID: "t", Tag: "v", TemplateDir: tmplDir})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Destroy(context.Background())
	for _, c := range e.commands(t) {
		if strings.Contains(c, " port ") {
			t.Fatalf("added a rule to a template that has one: %s", c)
		}
	}
	pf := m.Info().PortForwarding
	if len(pf) != 2 || pf[0].GuestPort != 22 || pf[0].Name != "ssh" || pf[1].GuestPort != 8080 || pf[1].HostPort == 0 {
		t.Fatalf("port forwards %+v", pf)
	}
	// A rule named ssh for another port: ours gets another name.
	e2 := fake(t)
	tmplDir = e2.template(t, "ssh=2222")
	d = e2.driver(t)
	m2, err := d.Start(context.Background(), driver.Spec{InstanceID: "i2", VMID: "t", Tag: "v", TemplateDir: tmplDir})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Destroy(context.Background())
	if pf := m2.Info().PortForwarding; pf[0].GuestPort != 22 || pf[0].Name != "corral-ssh" {
		t.Fatalf("port forwards %+v", pf)
	}
}

func TestShowSizesNumbersOrStrings(t *testing.T) {
	for body, want := range map[string]string{
		`{"ram":"4294967296"}`:                    "4G",
		`{"ram":"4G"}`:                            "4G",
		`{"ram":4294967296}`:                      "4G",
		`{"ram":"4G","ram_size":8589934592}`:      "8G",
		`{"ram_size":"3221225472"}`:               "3G",
		`{"ram_size":1610612736,"cpu_cores":"4"}`: "1536M",
	} {
		var s vmShow
		if err := json.Unmarshal([]byte(body), &s); err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		if got := s.ramString(); got != want {
			t.Errorf("%s: ram %q, want %q", body, got, want)
		}
	}
}

func TestEvictedTemplateIsDeleted(t *testing.T) {
	e := fake(t)
	tmplDir := e.template(t)
	d := e.driver(t)
	ctx := context.Background()
	m, err := d.Start(ctx, driver.Spec{InstanceID: "i1", VMID: "t", Tag: "v", TemplateDir: tmplDir})
	if err != nil {
		t.Fatal(err)
	}
	m.Destroy(ctx)
	if err := d.TemplateEvicted(ctx, "t", "v"); err != nil {
		t.Fatal(err)
	}
	if vms := e.vms(t); len(vms) != 0 {
		t.Fatalf("left: %v", vms)
	}
	if err := d.TemplateEvicted(ctx, "t", "v"); err != nil {
		t.Fatalf("second eviction: %v", err)
	}
}

func TestSweepDeletesLeftInstances(t *testing.T) {
	e := fake(t)
	tmplDir := e.template(t)
	d := e.driver(t)
	ctx := context.Background()
	m, err := d.Start(ctx, driver.Spec{InstanceID: "i1", VMID: "t", Tag: "v", TemplateDir: tmplDir})
	if err != nil {
		t.Fatal(err)
	}
	e.anka(t, "create", "mine", "15.3") // not ours: kept
	// The agent restarts: a new driver on the same host.
	d2 := e.driver(t)
	if err := d2.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if vms := e.vms(t); strings.Join(vms, ",") != "corral-tmpl-t-v,mine" {
		t.Fatalf("left: %v", vms)
	}
	// The first driver's watcher runs anka until it sees its VM gone: wait
	// for that, or it writes into the fake's home while the test's
	// directory is removed ("directory not empty", seen in make test).
	select {
	case <-m.Done():
	case <-time.After(time.Minute):
		t.Fatal("the swept VM's watcher never saw it gone")
	}
}

func TestSaveExports(t *testing.T) {
	e := fake(t)
	tmplDir := e.template(t)
	d := e.driver(t)
	ctx := context.Background()
	m, err := d.Start(ctx, driver.Spec{InstanceID: "i1", VMID: "t", Tag: "v", TemplateDir: tmplDir})
	if err != nil {
		t.Fatal(err)
	}
	m.RunScript(ctx, []byte("echo changed > marker"))
	out := t.TempDir()
	if _, err := m.(driver.Saver).Save(ctx, out, false); err != nil {
		t.Fatal(err)
	}
	m.Destroy(ctx)
	// The saved file starts like any template.
	m2, err := d.Start(ctx, driver.Spec{InstanceID: "i2", VMID: "saved", Tag: "v1", TemplateDir: out})
	if err != nil {
		t.Fatal(err)
	}
	m2.Destroy(ctx)

	// Without an Enterprise licence, saving says why it cannot.
	t.Setenv("FAKE_ANKA_LICENSE", "com.veertu.anka.run")
	d3 := e.driver(t)
	m3, err := d3.Start(ctx, driver.Spec{InstanceID: "i3", VMID: "t", Tag: "v", TemplateDir: tmplDir})
	if err != nil {
		t.Fatal(err) // the template was imported before
	}
	defer m3.Destroy(ctx)
	if _, err := m3.(driver.Saver).Save(ctx, t.TempDir(), false); err == nil || !strings.Contains(err.Error(), "Enterprise") {
		t.Fatalf("save under a Run licence: %v", err)
	}
	if _, err := d3.Start(ctx, driver.Spec{InstanceID: "i4", VMID: "other", Tag: "v", TemplateDir: tmplDir}); err == nil || !strings.Contains(err.Error(), "Enterprise") {
		t.Fatalf("import under a Run licence: %v", err)
	}
}

func TestVMStoppingOnItsOwnIsReported(t *testing.T) {
	e := fake(t)
	tmplDir := e.template(t)
	d := e.driver(t)
	m, err := d.Start(context.Background(), driver.Spec{InstanceID: "i9", VMID: "t", Tag: "v", TemplateDir: tmplDir})
	if err != nil {
		t.Fatal(err)
	}
	e.anka(t, "stop", "corral-vm-i9")
	select {
	case <-m.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("VM stopping on its own not reported")
	}
	if err := m.Err(); err == nil || !strings.Contains(err.Error(), "is stopped") {
		t.Fatalf("reason %v", err)
	}
}

func TestMissingCLI(t *testing.T) {
	if _, err := New(Config{Binary: "/nonexistent/anka"}); err == nil || !strings.Contains(err.Error(), "macOS") {
		t.Fatalf("got %v", err)
	}
}

func TestConformance(t *testing.T) {
	e := fake(t)
	tmplDir := e.template(t)
	drivertest.Run(t, drivertest.Setup{
		New: func(t *testing.T) driver.Driver { return e.driver(t) },
		Spec: func(t *testing.T, id string) driver.Spec {
			return driver.Spec{InstanceID: id, VMID: "t1", Tag: "v1", TemplateDir: tmplDir, HostIP: "127.0.0.1"}
		},
		VMs: e.vms,
		Saved: func(t *testing.T, id, dir, _, _ string) driver.Spec {
			return driver.Spec{InstanceID: id, VMID: "saved", Tag: "v1", TemplateDir: dir, HostIP: "127.0.0.1"}
		},
		Timeout: 10 * time.Second,
	})
}
