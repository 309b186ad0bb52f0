// Package driver defines how a node agent runs VMs. Implementations live in
// subpackages: synthetic (tests and simulations), and real hypervisors.
package driver

import (
	"context"

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
