package node

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/driver"
)

// instance drives one assignment from pull to destruction.
type instance struct {
	a       *Agent
	as      apiv1.Assignment
	cancel  context.CancelFunc
	ctx     context.Context
	stopped sync.Once
	// lost: this node ran the instance's job before it restarted; the VM
	// is gone. (One whose VM was still booting simply boots again.)
	lost bool
	// shutdown: the agent is stopping, not the controller terminating.
	shutdown atomic.Bool
	// fenced: the node lost its lease and stops the VM itself.
	fenced atomic.Bool
	// begun: its job may have begun (Started reported or script run).
	begun atomic.Bool

	mu sync.Mutex
	vm driver.VM // once booted
	// restartc carries an assignment with a higher restart count.
	restartc chan apiv1.Assignment
	asked    int // the highest restart count passed to restart
}

// restarts is the restart count of the assignment the instance runs (or
// was last asked to run).
func (in *instance) restarts() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	n := in.as.Restarts
	if in.asked > n {
		n = in.asked
	}
	return n
}

// restart asks the running instance to stop and start its VM in place.
func (in *instance) restart(as apiv1.Assignment) {
	in.mu.Lock()
	in.asked = as.Restarts
	in.mu.Unlock()
	select {
	case <-in.restartc: // a newer request replaces a pending one
	default:
	}
	in.restartc <- as
}

// runningVM is the instance's VM once it booted, else nil.
func (in *instance) runningVM() driver.VM {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.vm
}

func newInstance(a *Agent, as apiv1.Assignment) *instance {
	ctx, cancel := context.WithCancel(context.Background())
	return &instance{a: a, as: as, ctx: ctx, cancel: cancel, restartc: make(chan apiv1.Assignment, 1)}
}

// terminate asks the instance to destroy its VM and report Terminated.
func (in *instance) terminate() { in.stopped.Do(in.cancel) }

func (in *instance) report(st apiv1.InstanceStatus) {
	st.InstanceID = in.as.InstanceID
	if st.State == apiv1.StateStarted || st.State == apiv1.StateError {
		if c, ok := in.runningVM().(driver.Consoler); ok {
			st.Console = c.Console(apiv1.MaxConsole)
		}
	}
	in.a.sendStatus(st)
}

// fail reports Error; released says the VM is gone, freeing the slot.
func (in *instance) fail(msg string, vm driver.VM, script *apiv1.ScriptResult, released bool) {
	st := apiv1.InstanceStatus{State: apiv1.StateError, Message: msg, StartupScript: script, Released: released}
	if vm != nil {
		info := vm.Info()
		st.VMInfo = &info
	}
	in.a.log.Warn("instance failed", "instance", in.as.InstanceID, "reason", msg)
	in.report(st)
}

// run is the instance's whole life on this node. It ends when the controller
// unassigns the instance or the agent shuts down (stopAll terminates it).
func (in *instance) run() {
	defer func() {
		// A VM whose job may have run keeps its marker through a shutdown,
		// so the agent's next run reports it lost.
		if !in.shutdown.Load() || !in.begun.Load() {
			in.a.clearRunning(in.as.InstanceID)
		}
	}()
	if in.lost {
		in.begun.Store(true) // in its earlier life: its marker stays until the controller lets go
		in.fail("VM lost: the node agent restarted while it ran", nil, nil, true)
		in.waitTerminate()
		return
	}
	vm, ok := in.boot()
	if vm == nil {
		switch {
		case ok: // failed, already reported
		case in.shutdown.Load():
			// Never started: another node (or this one, back) can run it.
			in.a.clearRunning(in.as.InstanceID)
			in.report(apiv1.InstanceStatus{State: apiv1.StateScheduling, Requeue: true, Released: true,
				Message: "node agent shut down"})
			return
		default: // terminated before it ran
			in.report(in.endState(nil))
			return
		}
		in.waitTerminate()
		return
	}
	for {
		in.mu.Lock()
		in.vm = vm
		in.mu.Unlock()
		healthy := in.startupScript(vm)
		var vmDone <-chan struct{}
		if healthy {
			vmDone = vm.Done()
		}
		select {
		case <-in.ctx.Done():
			in.destroy(vm)
			return
		case <-vmDone:
			in.fail(fmt.Sprintf("VM exited unexpectedly: %v", vm.Err()), vm, nil, true)
			<-in.ctx.Done()
			in.destroy(vm)
			return
		case as := <-in.restartc:
			// Restart in place: same instance, same slot, a new VM.
			in.a.log.Info("restarting instance", "instance", as.InstanceID, "restarts", as.Restarts)
			dctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			if err := vm.Destroy(dctx); err != nil {
				in.a.log.Error("destroy VM for a restart", "instance", as.InstanceID, "err", err)
			}
			cancel()
			in.mu.Lock()
			in.vm = nil // the assignment is the same but for its count (in.asked)
			in.mu.Unlock()
			next, ok := in.boot()
			if next == nil {
				if ok { // failed, already reported
					in.waitTerminate()
				} else {
					in.report(in.endState(nil))
				}
				return
			}
			vm = next
		}
	}
}

// waitTerminate holds a failed instance until the controller unassigns it,
// then confirms Terminated.
func (in *instance) waitTerminate() {
	<-in.ctx.Done()
	in.report(in.endState(nil))
}

// endState is the report once the VM is gone: Terminated when the controller
// asked, Error when the node agent itself is shutting down.
func (in *instance) endState(info *apiv1.VMInfo) apiv1.InstanceStatus {
	if in.fenced.Load() && !in.begun.Load() {
		// Nothing of its job ran: the cloud may place it again.
		return apiv1.InstanceStatus{State: apiv1.StateScheduling, Requeue: true, VMInfo: info, Released: true,
			Message: "VM stopped before its job began: its node could not reach the controller for longer than its lease (self-fencing)"}
	}
	if in.fenced.Load() {
		return apiv1.InstanceStatus{State: apiv1.StateError, VMInfo: info, Released: true,
			Message: "VM stopped by its node: the node could not reach the controller for longer than its lease (self-fencing)"}
	}
	if in.shutdown.Load() && !in.begun.Load() {
		return apiv1.InstanceStatus{State: apiv1.StateScheduling, Requeue: true, VMInfo: info, Released: true,
			Message: "node agent shut down before its job began"}
	}
	if in.shutdown.Load() {
		return apiv1.InstanceStatus{State: apiv1.StateError, Message: "node agent shut down; VM destroyed",
			VMInfo: info, Released: true}
	}
	return apiv1.InstanceStatus{State: apiv1.StateTerminated, VMInfo: info}
}

// boot pulls the template if needed and starts the VM. A nil VM with ok=true
// means it failed (already reported); ok=false means it was terminated.
func (in *instance) boot() (driver.VM, bool) {
	as, spec := in.as, in.as.Spec
	tmpl := in.a.cfg.Templates
	if !tmpl.Has(as.VMID, as.Tag) {
		in.report(apiv1.InstanceStatus{State: apiv1.StatePulling, Progress: 0})
		var pace progressPace
		err := tmpl.Pull(in.ctx, as.VMID, as.Tag, spec.TemplateName, func(p float64) {
			if pace.due(p, time.Now()) {
				in.report(apiv1.InstanceStatus{State: apiv1.StatePulling, Progress: p})
			}
		})
		if in.ctx.Err() != nil {
			return nil, false
		}
		if err != nil {
			in.a.log.Warn("template pull failed; asking for another node", "instance", as.InstanceID, "err", err)
			in.report(apiv1.InstanceStatus{State: apiv1.StateError, Released: true, Replace: true,
				Message: fmt.Sprintf("pull of %s tag %s failed on node %s: %v", spec.TemplateName, as.Tag, in.a.report.NodeName, err)})
			return nil, true
		}
		in.a.templatesChanged()
	}
	var templateDir string
	if held, ok := tmpl.(interface{ Path(vmid, tag string) string }); ok {
		templateDir = held.Path(as.VMID, as.Tag)
	}
	// From here a VM may exist; the marker outlives a crash or shutdown, so
	// a restarted agent knows this VM was lost. Work it never reached is
	// simply started again (or placed elsewhere).
	in.a.markRunning(as.InstanceID)
	vm, err := in.a.cfg.Driver.Start(in.ctx, driver.Spec{
		InstanceID: as.InstanceID, VMID: as.VMID, Tag: as.Tag, TemplateName: spec.TemplateName,
		VCPU: spec.VCPU, VRAMMB: spec.VRAM, HostIP: in.a.report.IPAddress, NodeID: in.a.report.NodeID,
		TemplateDir: templateDir,
	})
	if in.ctx.Err() != nil {
		if vm != nil {
			in.destroy(vm)
			return nil, true // destroy reported Terminated
		}
		return nil, false
	}
	if err != nil {
		in.fail(fmt.Sprintf("start VM: %v", err), nil, nil, true)
		return nil, true
	}
	in.a.log.Info("instance started", "instance", as.InstanceID, "vmid", as.VMID, "tag", as.Tag)
	return vm, true
}

// startupScript applies the start request's script semantics and reports the
// instance Started; it returns false when the instance ended in Error.
func (in *instance) startupScript(vm driver.VM) bool {
	spec := in.as.Spec
	info := vm.Info()
	in.begun.Store(true)
	in.a.markBegun(in.as.InstanceID)
	if len(spec.StartupScript) == 0 {
		in.report(apiv1.InstanceStatus{State: apiv1.StateStarted, VMInfo: &info})
		return true
	}
	if !spec.ScriptMonitoring {
		// Unmonitored: the instance is ready now; the result is reported later.
		in.report(apiv1.InstanceStatus{State: apiv1.StateStarted, VMInfo: &info})
		go func() {
			res, err := vm.RunScript(in.ctx, spec.StartupScript)
			if err != nil || in.ctx.Err() != nil {
				return
			}
			info := vm.Info()
			in.report(apiv1.InstanceStatus{State: apiv1.StateStarted, VMInfo: &info, StartupScript: &res})
		}()
		return true
	}
	timeout := time.Duration(spec.ScriptTimeout) * time.Second
	sctx, cancel := context.WithTimeout(in.ctx, timeout)
	res, err := vm.RunScript(sctx, spec.StartupScript)
	cancel()
	if in.ctx.Err() != nil {
		return false
	}
	var reason string
	switch {
	case err != nil:
		reason = fmt.Sprintf("startup script could not run: %v", err)
	case res.DidTimeout:
		reason = fmt.Sprintf("startup script timed out after %ds", spec.ScriptTimeout)
	case res.ReturnCode != 0:
		reason = fmt.Sprintf("startup script exit code %d", res.ReturnCode) // the reference's wording
	default:
		info := vm.Info()
		in.report(apiv1.InstanceStatus{State: apiv1.StateStarted, VMInfo: &info, StartupScript: &res})
		return true
	}
	switch spec.ScriptFailHandler {
	case apiv1.FailHandlerKeep:
		in.fail(reason, vm, &res, false)
	case apiv1.FailHandlerDelete:
		_ = vm.Destroy(context.WithoutCancel(in.ctx))
		in.fail(reason+"; VM deleted", vm, &res, true)
	default:
		_ = vm.Stop(context.WithoutCancel(in.ctx))
		in.fail(reason+"; VM stopped", vm, &res, true)
	}
	return false
}

// destroy deletes the VM and confirms Terminated.
func (in *instance) destroy(vm driver.VM) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := vm.Destroy(ctx); err != nil {
		in.a.log.Error("destroy VM", "instance", in.as.InstanceID, "err", err)
	}
	info := vm.Info()
	in.report(in.endState(&info))
	in.a.log.Info("instance destroyed", "instance", in.as.InstanceID, "shutdown", in.shutdown.Load())
}

// progressPace decides which pull progress updates to send. Each one is an
// etcd write, so a long pull reports every 5% and at least every 10 s
// (a 10-minute pull: about 80 writes, not one every half second).
type progressPace struct {
	last   float64
	lastAt time.Time
}

func (p *progressPace) due(progress float64, now time.Time) bool {
	if progress < 1 && progress-p.last < 0.05 && now.Sub(p.lastAt) < 10*time.Second {
		return false
	}
	p.last, p.lastAt = progress, now
	return true
}
