package node

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/driver"
	"github.com/corral-build/corral/internal/retry"
)

// saveImages starts each new save-image request in the background; the
// controller drops a request from this node's list once its outcome arrived.
func (a *Agent) saveImages(ctx context.Context, saves []apiv1.ImageSave) {
	for _, s := range saves {
		a.startRequest(s.RequestID, func() {
			res := apiv1.ImageResult{NodeID: a.report.NodeID, RequestID: s.RequestID}
			var err error
			res.TemplateID, res.Note, res.ScriptResult, err = a.saveImage(ctx, s)
			if ctx.Err() != nil {
				return // shutting down: the controller ends the request when the instance ends
			}
			if err != nil {
				res.Error = err.Error()
				a.log.Warn("save image failed", "request", s.RequestID, "instance", s.InstanceID, "err", err)
			}
			report := retry.Policy{Attempts: 10, Initial: time.Second, Max: 10 * time.Second, PerAttempt: 30 * time.Second}
			if err := report.Do(ctx, func(ctx context.Context) error { return a.ctl.ImageDone(ctx, res) }); err != nil {
				a.log.Warn("report saved image", "request", s.RequestID, "err", err)
			}
		})
	}
}

// saveImage runs the pre-save script, has the driver write the VM out as a
// template and pushes it. Once the VM was stopped for saving, a failure also
// fails the instance: it cannot go back to Started.
func (a *Agent) saveImage(ctx context.Context, s apiv1.ImageSave) (templateID, note string, script *apiv1.ScriptResult, err error) {
	a.mu.Lock()
	in := a.instances[s.InstanceID]
	a.mu.Unlock()
	var vm driver.VM
	if in != nil {
		vm = in.runningVM()
	}
	if vm == nil {
		return "", "", script, fmt.Errorf("instance %s is not running on node %s", s.InstanceID, a.report.NodeName)
	}
	if pusher, ok := vm.(driver.Pusher); ok {
		if script, note, err = a.preSave(ctx, vm, s); err != nil {
			return "", "", script, err
		}
		a.log.Info("saving instance as an OCI image", "instance", s.InstanceID, "template", s.TemplateName, "tag", s.Tag)
		auth := a.pushAuth("repository:" + s.TemplateName + ":pull,push")
		creds := func(ctx context.Context) (string, string, error) {
			h, err := auth(ctx)
			tok, _ := strings.CutPrefix(h, "Bearer ")
			if tok == "" {
				return "", "", err
			}
			return "token", tok, err
		}
		in.report(apiv1.InstanceStatus{State: apiv1.StatePushing})
		id, pushNote, err := pusher.Push(ctx, s.TemplateName, s.Tag, creds)
		note = joinNotes(note, pushNote)
		if err != nil {
			info := vm.Info()
			in.report(apiv1.InstanceStatus{State: apiv1.StateError, VMInfo: &info,
				Message: fmt.Sprintf("save image failed: %v; VM stopped", err)})
			return "", "", script, fmt.Errorf("push: %w", err)
		}
		a.templatesChanged()
		return id, note, script, nil
	}
	saver, ok := vm.(driver.Saver)
	if !ok {
		return "", "", script, fmt.Errorf("the %s driver cannot save instances as templates", a.cfg.Driver.Name())
	}
	rt, ok := a.cfg.Templates.(*RegistryTemplates)
	if !ok {
		return "", "", script, errors.New("this cloud has no registry to save the image into")
	}
	if script, note, err = a.preSave(ctx, vm, s); err != nil {
		return "", "", script, err
	}

	dir := filepath.Join(a.dataDir(), "saves", s.RequestID)
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", script, fmt.Errorf("save image: %w", err)
	}
	defer os.RemoveAll(dir)
	a.log.Info("saving instance as a template", "instance", s.InstanceID, "template", s.TemplateName, "tag", s.Tag)
	fail := func(err error) (string, string, *apiv1.ScriptResult, error) {
		info := vm.Info()
		in.report(apiv1.InstanceStatus{State: apiv1.StateError, VMInfo: &info,
			Message: fmt.Sprintf("save image failed: %v; VM stopped", err)})
		return "", "", script, err
	}
	in.report(apiv1.InstanceStatus{State: apiv1.StatePushing})
	saveNote, err := saver.Save(ctx, dir, s.Suspend)
	note = joinNotes(note, saveNote)
	if err != nil {
		return fail(fmt.Errorf("save VM: %w", err))
	}
	last := time.Time{}
	// A push token, granted while this node has the save to do.
	pushClient, err := client.NewRegistry(rt.Client.URL())
	if err != nil {
		return fail(err)
	}
	pushClient.UseTLS(a.cfg.TLS)
	pushClient.UseAuth(a.pushAuth("repository:*:pull,push"))
	res, err := pushClient.Push(ctx, client.PushOptions{Source: dir, Template: s.TemplateName, Tag: s.Tag,
		Description: s.Description, Concurrency: rt.Concurrency,
		Progress: func(p client.Progress) {
			if time.Since(last) > 5*time.Second {
				last = time.Now()
				a.log.Info("saving instance", "instance", s.InstanceID, "phase", p.Phase, "done_bytes", p.Done, "total_bytes", p.Total)
			}
		},
		BeforeCommit: func(ctx context.Context) error {
			if !s.RevertBeforePush {
				return nil
			}
			list, err := pushClient.Templates(ctx)
			if err != nil {
				return fmt.Errorf("revert before push: %w", err)
			}
			for _, t := range list {
				if t.Name == s.TemplateName {
					return pushClient.Revert(ctx, t.ID)
				}
			}
			return nil // a new template: no tag to drop
		}})
	if err != nil {
		return fail(fmt.Errorf("push: %w", err))
	}
	a.log.Info("instance saved", "instance", s.InstanceID, "template", res.TemplateID, "tag", s.Tag, "sent_bytes", res.SentBytes)
	return res.TemplateID, note, script, nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// preSave runs the save request's script in the VM first, if it has one.
// A script that fails cancels the save only with cancel_on_script_failure;
// otherwise the save goes on and the note says so.
func (a *Agent) preSave(ctx context.Context, vm driver.VM, s apiv1.ImageSave) (*apiv1.ScriptResult, string, error) {
	if len(s.Script) == 0 {
		return nil, "", nil
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	res, err := vm.RunScript(sctx, s.Script)
	cancel()
	if err != nil {
		return nil, "", fmt.Errorf("pre-save script could not run: %w", err)
	}
	var failure string
	switch {
	case res.DidTimeout:
		failure = "pre-save script timed out after 10m"
	case res.ReturnCode != 0:
		failure = fmt.Sprintf("pre-save script failed with exit code %d: %s", res.ReturnCode, lastLine(res.Stderr))
	}
	if failure != "" && s.CancelOnScriptFailure {
		return &res, "", errors.New(failure)
	}
	if failure != "" {
		return &res, failure + "; saved anyway (cancel_on_script_failure is off)", nil
	}
	return &res, "", nil
}

func joinNotes(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "; " + b
}

// pushAuth returns the Authorization for a save's pushes: a token for scope
// the controller grants while this node has a save to do ("" when the cloud
// issues no tokens), renewed before it expires (a push of many gigabytes
// outlasts one).
func (a *Agent) pushAuth(scope string) func(context.Context) (string, error) {
	var mu sync.Mutex
	var header string
	var renewAt time.Time
	return func(ctx context.Context) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		if !renewAt.IsZero() && time.Now().Before(renewAt) {
			return header, nil
		}
		tok, err := a.ctl.RegistryToken(ctx, scope)
		var fe *client.FailError
		switch {
		case errors.As(err, &fe) && fe.HTTPStatus == http.StatusNotFound: // tokens off
			header, renewAt = "", time.Now().Add(time.Minute)
		case err != nil:
			return "", fmt.Errorf("registry push token: %w", err)
		default:
			header = "Bearer " + tok.Token
			renewAt = time.Now().Add(time.Duration(max(tok.ExpiresIn-60, tok.ExpiresIn/2)) * time.Second)
		}
		return header, nil
	}
}
