package tart

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/driver"
	"github.com/corral-build/corral/internal/driver/drivertest"
	"github.com/corral-build/corral/internal/fakecli"
	"github.com/corral-build/corral/internal/fakecli/faketart"
	"github.com/corral-build/corral/internal/testenv"
)

func TestMain(m *testing.M) {
	fakecli.Dispatch(faketart.Tool)
	os.Exit(m.Run())
}

type env struct {
	bin, home, registry, host string
}

func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

// fake installs the strict fake tart (TART_HOME, guest SSH on a free port,
// small disks in 1 MiB layers) and starts a registry.
func fake(t *testing.T) env {
	t.Helper()
	dir := t.TempDir()
	if err := fakecli.Install(dir, "tart"); err != nil {
		t.Fatal(err)
	}
	e := env{bin: filepath.Join(dir, "tart"), home: filepath.Join(dir, "home")}
	t.Setenv("TART_HOME", e.home)
	t.Setenv("FAKE_TART_SSH_PORT", freePort(t))
	t.Setenv("FAKE_TART_DISK_BYTES", strconv.Itoa(3<<20+12345))
	t.Setenv("FAKE_TART_CHUNK", strconv.Itoa(1<<20))
	t.Setenv("FAKE_TART_LOG", filepath.Join(dir, "log"))
	reg := testenv.StartRegistry(t, t.TempDir())
	e.registry = reg.URL
	e.host = strings.TrimPrefix(reg.URL, "http://")
	return e
}

func (e env) tart(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(e.bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("tart %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// image makes a macOS VM and pushes it as repo:tag.
func (e env) image(t *testing.T, repo, tag string) {
	t.Helper()
	e.tart(t, "create", "src-"+tag, "--from-ipsw", "latest")
	e.tart(t, "push", "src-"+tag, e.host+"/"+repo+":"+tag, "--insecure")
	e.tart(t, "delete", "src-"+tag)
}

func (e env) driver(t *testing.T) *Driver {
	t.Helper()
	d, err := New(Config{Binary: e.bin, SSHPort: atoi(os.Getenv("FAKE_TART_SSH_PORT")), ForwardHost: "127.0.0.1",
		BootTimeout: 30 * time.Second, Log: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := client.NewRegistry(e.registry)
	if err != nil {
		t.Fatal(err)
	}
	d.UseRegistry(driver.Registry{URL: e.registry, Template: rc.Template})
	return d
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

func (e env) vms(t *testing.T) []string {
	return strings.Fields(e.tart(t, "list", "--source", "local", "-q"))
}

func TestConformance(t *testing.T) {
	e := fake(t)
	e.image(t, "macos/sonoma", "v1")
	drivertest.Run(t, drivertest.Setup{
		New: func(t *testing.T) driver.Driver { return e.driver(t) },
		Spec: func(t *testing.T, id string) driver.Spec {
			return driver.Spec{InstanceID: id, VMID: apiv1.OCITemplateID("macos/sonoma"), Tag: "v1",
				TemplateName: "macos/sonoma", HostIP: "127.0.0.1", VCPU: 4, VRAMMB: 8192}
		},
		VMs: e.vms,
		Saved: func(t *testing.T, id, templateID, template, tag string) driver.Spec {
			return driver.Spec{InstanceID: id, VMID: templateID, Tag: tag, TemplateName: template, HostIP: "127.0.0.1"}
		},
		Timeout:      30 * time.Second,
		GuestSSHPort: atoi(os.Getenv("FAKE_TART_SSH_PORT")),
	})
}

// The node's template cache is Tart's OCI cache: a pull fetches the image
// once, the cache reports it by template id, and an instance starts from it.
func TestTemplateCache(t *testing.T) {
	e := fake(t)
	e.image(t, "macos/sonoma", "v1")
	d := e.driver(t)
	c := d.UseRegistry(driver.Registry{URL: e.registry, Template: func(ctx context.Context, id string) (apiv1.TemplateDetail, error) {
		rc, _ := client.NewRegistry(e.registry)
		return rc.Template(ctx, id)
	}})
	id := apiv1.OCITemplateID("macos/sonoma")
	if c.Has(id, "v1") {
		t.Fatal("cached before any pull")
	}
	if err := c.Pull(context.Background(), id, "v1", "macos/sonoma", func(float64) {}); err != nil {
		t.Fatal(err)
	}
	if !c.Has(id, "v1") {
		t.Fatal("not cached after the pull")
	}
	list := c.List()
	if len(list) != 1 || list[0].UUID != id || list[0].Tag != "v1" || list[0].Name != "macos/sonoma" {
		t.Fatalf("cache list %+v", list)
	}
	// Removing it on request empties Tart's cache of it.
	if err := c.(interface {
		Remove(ctx context.Context, vmid, tag string) error
	}).Remove(context.Background(), id, "v1"); err != nil {
		t.Fatal(err)
	}
	if c.Has(id, "v1") {
		t.Fatal("cached after removal")
	}
	// An unknown template says why.
	if err := c.Pull(context.Background(), apiv1.OCITemplateID("nope"), "v1", "", func(float64) {}); err == nil {
		t.Fatal("pulled an unknown template")
	}
}

// A third running macOS VM is refused by tart (Apple's licence limit): the
// driver reports it rather than hanging.
func TestThirdMacOSVMRefused(t *testing.T) {
	e := fake(t)
	e.image(t, "macos/sonoma", "v1")
	d := e.driver(t)
	ctx := context.Background()
	spec := func(id string) driver.Spec {
		return driver.Spec{InstanceID: id, VMID: apiv1.OCITemplateID("macos/sonoma"), Tag: "v1", HostIP: "127.0.0.1"}
	}
	for _, id := range []string{"a", "b"} {
		vm, err := d.Start(ctx, spec(id))
		if err != nil {
			t.Fatal(err)
		}
		defer vm.Destroy(ctx)
	}
	_, err := d.Start(ctx, spec("c"))
	if err == nil || !strings.Contains(err.Error(), "system limit") {
		t.Fatalf("third VM: %v", err)
	}
	if vms := e.vms(t); contains(vms, "corral-vm-c") {
		t.Fatalf("the refused VM was left: %v", vms)
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

// The fake is strict: what real tart refuses, it refuses, with tart's exit
// codes and messages.
func TestFakeTartIsStrict(t *testing.T) {
	e := fake(t)
	e.tart(t, "create", "vm1", "--from-ipsw", "latest")
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"run", "missing"}, 1, `Error: the specified VM "missing" does not exist`},
		{[]string{"ip", "missing"}, 2, `the specified VM "missing" does not exist`},
		{[]string{"ip", "vm1"}, 1, "no IP address found, is your VM running?"},
		{[]string{"stop", "vm1"}, 2, `VM "vm1" is not running`},
		{[]string{"set", "vm1", "--cpu", "2"}, 1, "LessThanMinimalResourcesError"},
		{[]string{"set", "vm1", "--cpus", "4"}, 64, "unknown option '--cpus'"},
		{[]string{"clone", "vm1", "a/b"}, 64, "a/b should be a local name"},
		{[]string{"clone", "vm1"}, 64, "Missing expected argument '<new-name>'"},
		{[]string{"list", "--source", "remote"}, 64, "'remote' is not a valid <source>"},
		{[]string{"run", "vm1", "--graphics", "--no-graphics"}, 64, "mutually exclusive"},
		{[]string{"delete"}, 64, "Missing expected argument"},
		{[]string{"pull", "debian:latest"}, 1, "failed to parse remote name"},
	} {
		cmd := exec.Command(e.bin, c.args...)
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		if code != c.code || !strings.Contains(string(out), c.msg) {
			t.Errorf("tart %s: exit %d %q, want %d %q", strings.Join(c.args, " "), code, out, c.code, c.msg)
		}
	}
	// --opt=value is accepted, as swift-argument-parser does.
	e.tart(t, "set", "vm1", "--cpu=6", "--memory=8192")
	if out := e.tart(t, "get", "vm1", "--format", "json"); !strings.Contains(out, `"CPU" : 6`) && !strings.Contains(out, `"CPU": 6`) {
		t.Fatalf("get: %s", out)
	}
}

// What tart pushes is what the registry keeps: Tart's media types, layer
// order and annotations, and the image is a template of the catalog.
func TestPushedImageIsATemplate(t *testing.T) {
	e := fake(t)
	e.image(t, "macos/sonoma", "v1")
	e.image(t, "macos/sonoma", "v2")
	rc, _ := client.NewRegistry(e.registry)
	ctx := context.Background()
	list, err := rc.Templates(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := apiv1.OCITemplateID("macos/sonoma")
	if len(list) != 1 || list[0].ID != id || list[0].Name != "macos/sonoma" || list[0].Size < 3<<20 || list[0].Arch != runtime.GOARCH {
		t.Fatalf("templates %+v", list)
	}
	detail, err := rc.Template(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(detail.Versions) != 2 || detail.Versions[0].Tag != "v1" || detail.Versions[1].Tag != "v2" ||
		detail.Versions[1].Number != 1 || len(detail.Versions[1].Images) != 4 || detail.Versions[1].NVRAM == "" {
		t.Fatalf("versions %+v", detail.Versions)
	}
	req, _ := http.NewRequest("GET", e.registry+"/v2/macos/sonoma/manifests/v1", nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m struct {
		Layers []struct {
			MediaType   string            `json:"mediaType"`
			Annotations map[string]string `json:"annotations"`
		} `json:"layers"`
		Annotations map[string]string `json:"annotations"`
	}
	if err := jsonDecode(resp, &m); err != nil {
		t.Fatal(err)
	}
	if len(m.Layers) != 6 || m.Layers[0].MediaType != "application/vnd.cirruslabs.tart.config.v1" ||
		m.Layers[1].MediaType != "application/vnd.cirruslabs.tart.disk.v2" || m.Layers[1].Annotations["org.cirruslabs.tart.uncompressed-size"] != strconv.Itoa(1<<20) ||
		m.Layers[5].MediaType != "application/vnd.cirruslabs.tart.nvram.v1" || m.Annotations["org.cirruslabs.tart.uncompressed-disk-size"] != strconv.Itoa(3<<20+12345) {
		t.Fatalf("manifest %+v", m)
	}
	// A node of another driver is told why it cannot pull it as chunks.
	if _, err := rc.Manifest(ctx, id, "v1"); err == nil || !strings.Contains(err.Error(), "OCI image") {
		t.Fatalf("chunk manifest of an OCI template: %v", err)
	}
	// Deleting a version through the template API deletes the tag.
	if err := rc.Delete(ctx, id, "v1"); err != nil {
		t.Fatal(err)
	}
	if detail, _ := rc.Template(ctx, id); len(detail.Versions) != 1 || detail.Versions[0].Tag != "v2" {
		t.Fatalf("after deleting v1: %+v", detail.Versions)
	}
}

func jsonDecode(resp *http.Response, v any) error { return json.NewDecoder(resp.Body).Decode(v) }
