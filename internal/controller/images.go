package controller

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/store"
)

// SaveImage asks the node running a Started instance to save it as a new
// tag: of its own template, of target_vm_id, or of a new template named
// new_template_name. The node stops (or suspends) the VM, pushes it, and the
// instance is terminated once the tag is committed.
func (s *Service) SaveImage(ctx context.Context, req apiv1.ImageRequest) (string, error) {
	if req.ID == "" {
		return "", fieldErr("id", "required")
	}
	if !apiv1.NamePattern.MatchString(req.Tag) {
		return "", fieldErr("tag", "want 1-128 letters, digits or ._+@-, got %q", req.Tag)
	}
	switch {
	case req.RevertTag != "":
		return "", fieldErr("revert_tag", "not supported: revert the target with DELETE /api/v1/registry/revert?id=&tag= first, or use revert_before_push")
	case req.DoSuspendTest:
		return "", fieldErr("do_suspend_sanity_test", "not supported: no Corral driver can test a suspended image")
	}
	suspend := req.Suspend == nil || bool(*req.Suspend) // the reference's default
	if req.NewTemplateName != "" && req.TargetVMID != "" {
		return "", fieldErr("new_template_name", "give new_template_name or target_vm_id, not both")
	}
	if req.NewTemplateName != "" && !apiv1.NamePattern.MatchString(req.NewTemplateName) {
		return "", fieldErr("new_template_name", "want 1-128 letters, digits or ._+@-, got %q", req.NewTemplateName)
	}
	rec, err := s.st.GetInstance(ctx, req.ID)
	if err != nil {
		return "", notFound(err)
	}
	if rec.State != apiv1.StateStarted || !rec.SlotHeld {
		return "", fieldErr("id", "instance %s is %s; only a Started instance can be saved", req.ID, rec.State)
	}
	images, err := s.st.ListImages(ctx)
	if err != nil {
		return "", err
	}
	if slices.ContainsFunc(images, func(i apiv1.Image) bool { return i.InstanceID == req.ID && i.Status == apiv1.ImagePending }) {
		return "", fieldErr("id", "a save of instance %s is already pending", req.ID)
	}

	img := apiv1.Image{RequestID: apiv1.NewID(), InstanceID: req.ID, NodeID: rec.NodeID, Tag: req.Tag,
		Description: req.Description, Status: apiv1.ImagePending, CrTime: time.Now().UTC(),
		VMID: rec.VMID, NewTemplateName: req.NewTemplateName, Suspend: suspend, RevertBeforePush: req.RevertBeforePush,
		CancelOnScriptFailure: req.CancelOnScriptFailure, Script: req.Script}
	img.TS = img.CrTime
	switch {
	case req.NewTemplateName != "":
		if s.templateNamed(ctx, req.NewTemplateName) {
			return "", fieldErr("new_template_name", "a template named %q exists; use target_vm_id to add a tag to it", req.NewTemplateName)
		}
		img.TemplateName = req.NewTemplateName
	default:
		target := cmp.Or(req.TargetVMID, rec.VMID)
		tmpl, err := s.registry.GetTemplate(ctx, target)
		if err != nil {
			return "", err
		}
		for _, v := range tmpl.Versions {
			if v.Tag == req.Tag {
				return "", fieldErr("tag", "template %s already has tag %s", tmpl.Name, req.Tag)
			}
		}
		img.TemplateID, img.TemplateName = tmpl.ID, tmpl.Name
	}
	save := apiv1.ImageSave{RequestID: img.RequestID, InstanceID: req.ID, TemplateName: img.TemplateName, Tag: req.Tag,
		Description: req.Description, Suspend: suspend, RevertBeforePush: req.RevertBeforePush, Script: scriptBytes(req.Script),
		CancelOnScriptFailure: req.CancelOnScriptFailure}
	if err := s.st.CreateImage(ctx, img, save); errors.Is(err, store.ErrNotFound) {
		return "", fieldErr("id", "instance %s left its node meanwhile", req.ID)
	} else if err != nil {
		return "", err
	}
	s.log.Info("save image requested", "request", img.RequestID, "instance", req.ID, "node", rec.NodeID,
		"template", img.TemplateName, "tag", req.Tag)
	return img.RequestID, nil
}

func (s *Service) templateNamed(ctx context.Context, name string) bool {
	list, err := s.registry.ListTemplates(ctx)
	return err == nil && slices.ContainsFunc(list, func(t apiv1.Template) bool { return t.Name == name })
}

// scriptBytes accepts the script as base64 (as startup_script is sent) or
// as plain text.
func scriptBytes(s string) []byte {
	if s == "" {
		return nil
	}
	if raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s)); err == nil && utf8.Valid(raw) {
		return raw
	}
	return []byte(s)
}

// Images lists save-image requests, newest first.
func (s *Service) Images(ctx context.Context) ([]apiv1.ImageView, error) {
	list, err := s.st.ListImages(ctx)
	slices.SortFunc(list, func(a, b apiv1.Image) int { return b.CrTime.Compare(a.CrTime) })
	out := []apiv1.ImageView{}
	for _, img := range list {
		out = append(out, img.View(s.cfg.RegistryURL))
	}
	return out, err
}

// Image returns one save-image request.
func (s *Service) Image(ctx context.Context, id string) (apiv1.ImageView, error) {
	img, err := s.st.GetImage(ctx, id)
	return img.View(s.cfg.RegistryURL), notFound(err)
}

// FinishImage records a node's outcome; a saved instance is terminated (its
// VM was stopped to be saved).
func (s *Service) FinishImage(ctx context.Context, r apiv1.ImageResult) error {
	img, err := s.st.FinishImage(ctx, r.NodeID, r.RequestID, func(img *apiv1.Image) {
		img.Status, img.Message, img.ScriptResult = apiv1.ImageDone, r.Note, r.ScriptResult
		if r.Error != "" {
			img.Status, img.Message = apiv1.ImageError, r.Error
		}
		if r.TemplateID != "" {
			img.TemplateID = r.TemplateID
		}
	})
	if err != nil {
		return notFound(err)
	}
	s.log.Info("save image finished", "request", img.RequestID, "status", img.Status, "message", img.Message)
	if img.Status == apiv1.ImageDone {
		if err := s.Terminate(ctx, img.InstanceID); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	return nil
}
