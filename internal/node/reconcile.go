package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/driver"
)

// reconcile starts instances that are desired and not running, and destroys
// those no longer desired. Those the controller wants terminated are
// confirmed Terminated at once when this node holds no VM for them (it may
// never have seen them placed); the others confirm once destroyed.
func (a *Agent) reconcile(desired []apiv1.Assignment, terminate []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, id := range terminate {
		if in, ok := a.instances[id]; ok {
			in.terminate()
			continue
		}
		if _, ok := a.lost[id]; ok {
			delete(a.lost, id)
			a.clearRunning(id)
		}
		a.sendStatus(apiv1.InstanceStatus{InstanceID: id, State: apiv1.StateTerminated, Released: true})
	}
	if a.fenced.Load() {
		desired = nil // a stale answer from before the lease was lost
	}
	want := map[string]bool{}
	for _, as := range desired {
		want[as.InstanceID] = true
		if in, ok := a.instances[as.InstanceID]; ok {
			if as.Restarts > in.restarts() {
				in.restart(as)
			}
		} else if a.fencedIDs[as.InstanceID] {
			// Stopped by the fence: its report is on its way.
		} else {
			in := newInstance(a, as)
			// Lost while its VM booted: nothing of its job ran, and it
			// is still this node's: it boots again.
			in.lost = a.lost[as.InstanceID]
			delete(a.lost, as.InstanceID)
			a.instances[as.InstanceID] = in
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				in.run()
				a.mu.Lock()
				delete(a.instances, as.InstanceID)
				a.mu.Unlock()
			}()
		}
	}
	for id, in := range a.instances {
		if !want[id] {
			in.terminate()
		}
	}
	for id := range a.fencedIDs {
		if !want[id] {
			delete(a.fencedIDs, id)
		}
	}
	// Markers of instances terminated while this node was down.
	for id := range a.lost {
		if !want[id] {
			delete(a.lost, id)
			a.clearRunning(id)
		}
	}
}

func (a *Agent) markerDir() string { return filepath.Join(a.dataDir(), "running") }

// markRunning records that this node holds a VM for the instance.
// A VM may exist from here; its marker is empty while it boots.
func (a *Agent) markRunning(id string) {
	if err := os.MkdirAll(a.markerDir(), 0o755); err == nil {
		_ = os.WriteFile(filepath.Join(a.markerDir(), id), nil, 0o644)
	}
}

// markBegun records that the instance's job may have begun: it is about to
// be reported Started or its startup script to run. A VM lost before this
// is placed again after a crash; one lost after it fails, so a job never
// runs twice.
func (a *Agent) markBegun(id string) {
	_ = os.WriteFile(filepath.Join(a.markerDir(), id), []byte(markerBegun), 0o644)
}

const markerBegun = "begun\n"

func (a *Agent) clearRunning(id string) { _ = os.Remove(filepath.Join(a.markerDir(), id)) }

// runningMarkers maps the instances this node held VMs for to whether
// their job may have begun. A marker that cannot be read counts as begun.
func (a *Agent) runningMarkers() map[string]bool {
	entries, _ := os.ReadDir(a.markerDir())
	ids := map[string]bool{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(a.markerDir(), e.Name()))
		ids[e.Name()] = err != nil || len(b) > 0
	}
	return ids
}

// prefetch pulls distributed templates in the background and reports each
// outcome; the controller then drops the request from this node's list.
func (a *Agent) prefetch(ctx context.Context, list []apiv1.Prefetch) {
	for _, p := range list {
		a.startRequest(p.RequestID, func() {
			var err error
			switch {
			case p.Remove:
				err = a.removeTemplate(ctx, p.VMID, p.Tag)
			case !a.cfg.Templates.Has(p.VMID, p.Tag):
				err = a.cfg.Templates.Pull(ctx, p.VMID, p.Tag, p.TemplateName, func(float64) {})
				a.templatesChanged()
			}
			if ctx.Err() != nil {
				return // shutting down: the request stays pending for the next run
			}
			res := apiv1.PrefetchResult{NodeID: a.report.NodeID, RequestID: p.RequestID}
			if err != nil {
				res.Error = err.Error()
				a.log.Warn("distributed template pull failed", "vmid", p.VMID, "tag", p.Tag, "err", err)
			}
			if err := a.ctl.PrefetchDone(ctx, res); err != nil {
				a.log.Warn("report distribution", "err", err)
			}
		})
	}
}

// startRequest runs work for a controller request in the background unless
// it is already under way: the controller repeats a pending request in every
// answer until the node reports its outcome.
func (a *Agent) startRequest(id string, work func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.inFlight[id] {
		return
	}
	a.inFlight[id] = true
	go func() {
		defer func() {
			a.mu.Lock()
			delete(a.inFlight, id)
			a.mu.Unlock()
		}()
		work()
	}()
}

// removeTemplate deletes a template (every tag when tag is "") from this
// node's cache, keeping the tags an instance here uses (and saying so).
func (a *Agent) removeTemplate(ctx context.Context, vmid, tag string) error {
	rm, ok := a.cfg.Templates.(remover)
	if !ok {
		return errors.New("this node's template cache cannot remove templates")
	}
	var kept []string
	for _, t := range a.cfg.Templates.List() {
		if t.UUID != vmid || tag != "" && t.Tag != tag {
			continue
		}
		if a.templateInUse(vmid, t.Tag) {
			kept = append(kept, t.Tag)
			continue
		}
		if err := rm.Remove(ctx, vmid, t.Tag); err != nil {
			return err
		}
		a.log.Info("template removed from this node on request", "vmid", vmid, "tag", t.Tag)
		if ev, ok := a.cfg.Driver.(driver.TemplateEvicter); ok {
			if err := ev.TemplateEvicted(ctx, vmid, t.Tag); err != nil {
				a.log.Warn("could not delete the driver's copy of a removed template", "vmid", vmid, "tag", t.Tag, "err", err)
			}
		}
	}
	a.templatesChanged()
	if len(kept) > 0 {
		return fmt.Errorf("kept tag %s: an instance on this node uses it", strings.Join(kept, ", "))
	}
	return nil
}
