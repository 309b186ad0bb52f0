// Package driver defines how a node agent runs VMs. Implementations live in
// subpackages: synthetic (tests and simulations), and real hypervisors.
package driver

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	apiv1 "github.com/corral-build/corral/api/v1"
)

// Spec is what a driver needs to boot one instance.
type Spec struct {
	InstanceID   string
	VMID         string
	Tag          string
	TemplateName string
	VCPU         int // 0: the template's default
	VRAMMB       int // 0: the template's default
	HostIP       string
	NodeID       string
	// TemplateDir holds the template's files on this node (drivers that boot
	// from files need it; the synthetic driver does not).
	TemplateDir string
}

// Driver boots VMs on this node.
type Driver interface {
	Name() string
	// Start boots a VM and returns once it runs; ctx bounds the boot.
	Start(ctx context.Context, spec Spec) (VM, error)
}

// VM is one running (or stopped) virtual machine.
type VM interface {
	Info() apiv1.VMInfo
	// RunScript runs a startup script in the guest; ctx carries the timeout.
	RunScript(ctx context.Context, script []byte) (apiv1.ScriptResult, error)
	// Stop halts the VM but keeps it (script fail handler 0).
	Stop(ctx context.Context) error
	// Destroy stops the VM and deletes everything it owns.
	Destroy(ctx context.Context) error
	// Done is closed when the VM exits on its own; Err then says why.
	Done() <-chan struct{}
	Err() error
}

// Saver is a VM that can be written out as a template (POST /api/v1/image).
type Saver interface {
	// Save stops the VM (suspends it when suspend is set and the driver can)
	// and writes its files into the empty directory dir in the layout the
	// driver starts templates from. note says what was done differently from
	// what was asked (e.g. stopped instead of suspended).
	Save(ctx context.Context, dir string, suspend bool) (note string, err error)
}

// CopyTemplateFiles copies the regular files of src into dst (the parts of a
// template a saved VM keeps unchanged), skipping names in except. Copies may
// be hard links: list in except every file the caller will write.
func CopyTemplateFiles(src, dst string, except ...string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return fmt.Errorf("copy template %s: %w", src, err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() || slices.Contains(except, e.Name()) {
			continue
		}
		if err := copyFile(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			return fmt.Errorf("copy template %s: %w", src, err)
		}
	}
	return nil
}

// copyFile hard-links (templates are immutable once pulled) or copies.
func copyFile(src, dst string) error {
	if os.Link(src, dst) == nil {
		return nil
	}
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

// Consoler is a VM with a console log (qemu's serial port): Console answers
// its last max bytes.
type Consoler interface {
	Console(max int) string
}

// TailFile answers the last max bytes of the file at path ("" when absent).
func TailFile(path string, max int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	off := fi.Size() - int64(max)
	if off < 0 {
		off = 0
	}
	buf := make([]byte, fi.Size()-off)
	n, _ := f.ReadAt(buf, off)
	return string(buf[:n])
}

// Sweeper is a driver whose VMs outlive the agent process (anka, tart): it
// deletes those an earlier run of the agent left. The agent calls it once at
// start, before it runs any instance.
type Sweeper interface {
	Sweep(ctx context.Context) error
}

// TemplateEvicter is a driver that keeps its own copy of a template (anka
// imports it): the node tells it when it deleted the template's files.
type TemplateEvicter interface {
	TemplateEvicted(ctx context.Context, vmid, tag string) error
}

// TemplateCache is a template store a driver keeps itself (tart's OCI
// cache); the node agent uses it in place of its own chunk cache.
type TemplateCache interface {
	Has(vmid, tag string) bool
	// Pull fetches a template+tag, calling progress with 0..1.
	Pull(ctx context.Context, vmid, tag, name string, progress func(float64)) error
	List() []apiv1.NodeTemplate
}

// Registry is how a driver reaches the cloud's registry.
type Registry struct {
	URL string // http(s)://host:port
	// Credentials are the node's pull credentials.
	Credentials Credentials
	// Template looks a template up by id (its name is the OCI repository).
	Template func(ctx context.Context, id string) (apiv1.TemplateDetail, error)
}

// OCIPuller is a driver that pulls templates from the registry's OCI
// endpoint itself (tart).
type OCIPuller interface {
	UseRegistry(reg Registry) TemplateCache
}

// Pusher is a VM saved by pushing it to the registry's OCI endpoint as
// template:tag (tart push) with the given credentials; it returns the
// template's id.
type Pusher interface {
	Push(ctx context.Context, template, tag string, creds Credentials) (templateID, note string, err error)
}

// Credentials returns the user and password a registry takes ("" when it
// needs none).
type Credentials func(ctx context.Context) (user, password string, err error)
