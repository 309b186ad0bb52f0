package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/store"
)

// StartInstances validates spec against the registry, groups and nodes, and
// stores Count instances in Scheduling; the scheduler places them.
func (s *Service) StartInstances(ctx context.Context, spec apiv1.StartSpec) ([]string, error) {
	tmpl, err := s.catalog.Template(ctx, spec.VMID)
	if err != nil {
		return nil, err
	}
	version, err := resolveTag(tmpl, spec)
	if err != nil {
		return nil, err
	}
	number := version.Number
	spec.Tag, spec.Version, spec.TemplateName = version.Tag, &number, tmpl.Name
	if spec.GroupID != "" {
		if _, err := s.st.GetGroup(ctx, spec.GroupID); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return nil, fieldErr("group_id", "no group with id %q", spec.GroupID)
			}
			return nil, err
		}
	}
	if spec.NodeID != "" {
		if _, err := s.st.GetNode(ctx, spec.NodeID); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return nil, fieldErr("node_id", "no node with id %q", spec.NodeID)
			}
			return nil, err
		}
	}
	caller := callerOf(ctx)
	cost := int64(spec.Count)*(instanceRecordBytes+int64(len(spec.Metadata))) + int64(len(spec.StartupScript))
	release, err := s.reserveWaiting(ctx, caller, spec.Count, cost)
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	reqID := apiv1.NewID()
	recs := make([]store.InstanceRecord, spec.Count)
	ids := make([]string, spec.Count)
	for i := range recs {
		id := apiv1.NewID()
		ids[i] = id
		recs[i] = store.InstanceRecord{
			Instance: apiv1.Instance{
				InstanceID: id, State: apiv1.StateScheduling, AnkaRegistry: s.cfg.RegistryURL,
				VMID: spec.VMID, Tag: spec.Tag, Version: spec.Version, GroupID: spec.GroupID,
				ExternalID: spec.ExternalID, Name: instanceName(spec, tmpl.Name, tmpl.ID, id, now, i),
				InflightReqID: reqID, TS: now, CrTime: now, Arch: tmpl.Arch,
				Priority: spec.Priority, Metadata: spec.Metadata,
			},
			Spec: spec, Caller: caller, ScriptBytes: len(spec.StartupScript),
		}
	}
	// All or nothing, and not cut short by a client that goes away: the
	// batches are written under their own deadline, and rolled back if one
	// fails.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if err := s.st.CreateInstances(cctx, recs); err != nil {
		release()
		return nil, err
	}
	s.log.Info("instances requested", "count", spec.Count, "vmid", spec.VMID, "tag", spec.Tag,
		"group", spec.GroupID, "priority", spec.Priority, "request", reqID)
	return ids, nil
}

func resolveTag(t apiv1.TemplateDetail, spec apiv1.StartSpec) (apiv1.TemplateVersion, error) {
	switch {
	case spec.Tag != "":
		for _, v := range t.Versions {
			if v.Tag == spec.Tag {
				return v, nil
			}
		}
		return apiv1.TemplateVersion{}, &NoSuchTagError{spec.Tag}
	case spec.Version != nil:
		for _, v := range t.Versions {
			if v.Number == *spec.Version {
				return v, nil
			}
		}
		return apiv1.TemplateVersion{}, fieldErr("version", "template %s has no version %d", t.Name, *spec.Version)
	}
	latest, ok := t.Latest()
	if !ok {
		return latest, ErrNotInRegistry
	}
	return latest, nil
}

// instanceName expands name_template's $template_name, $template_id,
// $instance_id, $ts and $index; $node_id and $node_name are expanded once
// the instance is placed (nodeName).
func instanceName(spec apiv1.StartSpec, templateName, templateID, instanceID string, now time.Time, i int) string {
	if spec.NameTemplate == "" {
		return spec.Name
	}
	return strings.NewReplacer("$template_name", templateName, "$template_id", templateID, "$instance_id", instanceID,
		"$ts", strconv.FormatInt(now.Unix(), 10), "$index", strconv.Itoa(i)).Replace(spec.NameTemplate)
}

// nodeName expands $node_id and $node_name in a placed instance's name.
func nodeName(name, nodeID, nodeName string) string {
	return strings.NewReplacer("$node_id", nodeID, "$node_name", nodeName).Replace(name)
}

// GetInstance returns one instance's wire view.
func (s *Service) GetInstance(ctx context.Context, id string) (apiv1.Instance, error) {
	r, err := s.st.GetInstance(ctx, id)
	return r.Instance, notFound(err)
}

// InstanceFilter selects instances for ListInstances; empty fields match all.
type InstanceFilter struct {
	State, ExternalID, GroupID, NodeID string
}

func (f InstanceFilter) check() error {
	if f.State != "" && !slices.Contains(apiv1.InstanceStates, f.State) {
		return fieldErr("state", "unknown state %q (one of %s)", f.State, strings.Join(apiv1.InstanceStates, ", "))
	}
	return nil
}

func (f InstanceFilter) matches(r *store.InstanceRecord) bool {
	return (f.State == "" || r.State == f.State) && (f.ExternalID == "" || r.ExternalID == f.ExternalID) &&
		(f.GroupID == "" || r.GroupID == f.GroupID) && (f.NodeID == "" || r.NodeID == f.NodeID)
}

// ListInstances returns instances matching f, oldest first.
func (s *Service) ListInstances(ctx context.Context, f InstanceFilter) ([]apiv1.Instance, error) {
	entries, err := s.listed(ctx, f)
	if err != nil {
		return nil, err
	}
	out := make([]apiv1.Instance, len(entries))
	for i, e := range entries {
		out[i] = e.Instance
	}
	return out, nil
}

// listed is the instances matching f in creation order, ties (one
// request's instances) by id: a stable order for paging. The entries are
// the view's own (read-only), not copies.
func (s *Service) listed(ctx context.Context, f InstanceFilter) ([]store.Listed, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	return s.st.InstancesByCreation(ctx, f.matches)
}

// UpdateInstance changes an instance's external_id, name or metadata.
func (s *Service) UpdateInstance(ctx context.Context, id string, req apiv1.UpdateRequest) error {
	meta, err := apiv1.CheckMetadata(req.Metadata)
	if err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		v    *string
	}{{"external_id", req.ExternalID}, {"name", req.Name}} {
		if f.v != nil && len(*f.v) > apiv1.MaxTextField {
			return fieldErr(f.name, "at most %d bytes, got %d", apiv1.MaxTextField, len(*f.v))
		}
	}
	_, err = s.st.UpdateInstance(ctx, id, func(r *store.InstanceRecord) (store.InstanceUpdate, error) {
		if req.ExternalID != nil {
			r.ExternalID = *req.ExternalID
		}
		if req.Name != nil {
			r.Name = *req.Name
		}
		if meta != nil {
			r.Metadata = meta
		}
		r.TS = time.Now().UTC()
		return store.InstanceUpdate{}, nil
	})
	return notFound(err)
}

// Terminate ends an instance: one that holds a slot goes Terminating until its
// node destroys the VM; one that never ran is Terminated at once.
func (s *Service) Terminate(ctx context.Context, id string) error {
	_, err := s.st.UpdateInstance(ctx, id, func(r *store.InstanceRecord) (store.InstanceUpdate, error) {
		switch r.State {
		case apiv1.StateTerminated, apiv1.StateTerminating:
			return store.InstanceUpdate{Skip: true}, nil
		}
		now := time.Now().UTC()
		r.TS = now
		if r.SlotHeld {
			// The slot stays counted until the node confirms the VM gone; the
			// terminate marker asks it to, whether or not it saw the placement.
			r.State = apiv1.StateTerminating
			return store.InstanceUpdate{Terminate: true}, nil
		}
		r.State, r.FinishedAt = apiv1.StateTerminated, now
		return store.InstanceUpdate{Unassign: true}, nil
	})
	if store.IsNoSpace(err) {
		// etcd takes deletes only: the instance goes whole, its node
		// destroys the VM when its assignment goes, and space is freed.
		if err = s.st.ForgetInstance(ctx, id); err == nil {
			s.log.Warn("etcd is out of space (NOSPACE): the instance was terminated by deleting it", "instance", id)
			return nil
		}
	}
	if err == nil {
		s.log.Info("instance terminate requested", "instance", id)
	}
	return notFound(err)
}

// Restart stops and starts a Started instance's VM in place: same id, same
// node and slot; the node reports it Started again (its startup script runs
// again). The count in the assignment is the node's signal.
func (s *Service) Restart(ctx context.Context, id string) error {
	if id == "" {
		return fieldErr("instance_id", "required")
	}
	_, err := s.st.UpdateInstance(ctx, id, func(r *store.InstanceRecord) (store.InstanceUpdate, error) {
		if r.State != apiv1.StateStarted || !r.SlotHeld || r.NodeID == "" {
			return store.InstanceUpdate{}, fieldErr("instance_id", "only a Started instance can be restarted (%s is %s)", id, r.State)
		}
		r.Restarts++
		r.TS = time.Now().UTC()
		r.Message = "restarting"
		return store.InstanceUpdate{Restart: true}, nil
	})
	if err == nil {
		s.log.Info("instance restart requested", "instance", id)
	}
	return notFound(err)
}

// StartInstancesOnce is StartInstances made idempotent by the client's
// Idempotency-Key: a repeat of the same request with the same key (a retry
// after a lost answer) returns the first answer's ids and creates nothing;
// the same key with a different request is refused. Keys are kept a day.
func (s *Service) StartInstancesOnce(ctx context.Context, key string, spec apiv1.StartSpec) ([]string, error) {
	if len(key) > apiv1.MaxTextField {
		return nil, fieldErr("Idempotency-Key", "at most %d bytes, got %d", apiv1.MaxTextField, len(key))
	}
	body, _ := json.Marshal(spec)
	sum := sha256.Sum256(body)
	fingerprint := hex.EncodeToString(sum[:])
	keySum := sha256.Sum256([]byte(key))
	rel := hex.EncodeToString(keySum[:])
	prev, claimed, err := s.st.ClaimIdempotencyKey(ctx, rel, fingerprint, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	if !claimed {
		switch {
		case prev.Fingerprint != fingerprint:
			return nil, fieldErr("Idempotency-Key", "already used for a different start request")
		case prev.IDs == nil:
			return nil, fieldErr("Idempotency-Key", "a request with this key is still being processed; retry shortly")
		}
		return prev.IDs, nil
	}
	ids, err := s.StartInstances(ctx, spec)
	if err != nil {
		s.st.ReleaseIdempotencyKey(context.WithoutCancel(ctx), rel)
		return nil, err
	}
	if err := s.st.CompleteIdempotencyKey(context.WithoutCancel(ctx), rel, fingerprint, ids, 24*time.Hour); err != nil {
		s.log.Warn("record idempotency key", "err", err)
	}
	return ids, nil
}

// InstanceLogs answers GET /api/v1/vm/logs: the startup script's result and
// the console tail the node sent.
func (s *Service) InstanceLogs(ctx context.Context, id string) (apiv1.InstanceLogs, error) {
	if id == "" {
		return apiv1.InstanceLogs{}, fieldErr("id", "required")
	}
	r, err := s.st.GetInstance(ctx, id)
	if err != nil {
		return apiv1.InstanceLogs{}, notFound(err)
	}
	c, err := s.st.GetConsole(ctx, id)
	if err != nil {
		return apiv1.InstanceLogs{}, err
	}
	return apiv1.InstanceLogs{InstanceID: r.InstanceID, State: r.State, Message: r.Message,
		StartupScript: r.StartupScript, Console: c.Text, ConsoleAt: c.At}, nil
}

// ListInstancesJSON is ListInstances as encoded list items (GET /api/v1/vm),
// each encoded once per change of its instance.
func (s *Service) ListInstancesJSON(ctx context.Context, f InstanceFilter) ([]json.RawMessage, error) {
	entries, err := s.listed(ctx, f)
	if err != nil {
		return nil, err
	}
	out := make([]json.RawMessage, len(entries))
	for i, e := range entries {
		if out[i], err = e.ListItemJSON(); err != nil {
			return nil, fmt.Errorf("encode instance %s: %w", e.InstanceID, err)
		}
	}
	return out, nil
}
