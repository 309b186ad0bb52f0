package controller_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/scheduler"
	"github.com/corral-build/corral/internal/store"
	"github.com/corral-build/corral/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// cloud is a controller service over a real etcd with template "mac"
// (tags v1 = 0, v2 = 1) and node n1 (capacity 4).
type cloud struct {
	st  *store.Store
	svc *controller.Service
	cli *clientv3.Client
}

func newCloud(t *testing.T, cfg controller.Config) cloud {
	t.Helper()
	cli, st := testenv.StoreAt(t, "")
	path := filepath.Join(t.TempDir(), "templates.json")
	tmpl := []apiv1.TemplateDetail{{Template: apiv1.Template{ID: "tmpl-1", Name: "mac", Arch: apiv1.ArchARM64},
		Versions: []apiv1.TemplateVersion{{Tag: "v1", Number: 0}, {Tag: "v2", Number: 1}}}}
	data, _ := json.Marshal(tmpl)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := st.JoinNode(context.Background(), apiv1.NodeReport{NodeID: "n1", NodeName: "node-one", Capacity: 4,
		HostArch: apiv1.ArchARM64}, nil, 600); err != nil {
		t.Fatal(err)
	}
	return cloud{st: st, svc: controller.New(st, controller.NewFileRegistry(path), cfg, testenv.Logger(t)), cli: cli}
}

// place runs one scheduling pass (the real scheduler).
func (c cloud) place(t *testing.T) {
	t.Helper()
	key := c.st.Key("election/test")
	if _, err := c.cli.Put(context.Background(), key, "me"); err != nil {
		t.Fatal(err)
	}
	s := scheduler.New(c.st, scheduler.Config{}, testenv.Logger(t))
	if err := s.Pass(context.Background(), clientv3.Compare(clientv3.CreateRevision(key), ">", 0)); err != nil {
		t.Fatal(err)
	}
}

func (c cloud) get(t *testing.T, id string) store.InstanceRecord {
	t.Helper()
	r, err := c.st.GetInstance(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func fieldOf(err error) string {
	var fe *apiv1.FieldError
	if errors.As(err, &fe) {
		return fe.Field
	}
	return ""
}

func ptr[T any](v T) *T { return &v }

// TestStartInstancesRecordsTheRequest: what a start stores, by case.
func TestStartInstancesRecordsTheRequest(t *testing.T) {
	ctx := context.Background()
	c := newCloud(t, controller.Config{RegistryURL: "http://registry:8089"})
	group, err := c.svc.CreateGroup(ctx, apiv1.GroupRequest{Name: ptr("fast")})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		spec    apiv1.StartSpec
		tag     string
		version int
		err     string // a field, or an error's text
	}{
		{name: "the latest tag", spec: apiv1.StartSpec{VMID: "tmpl-1"}, tag: "v2", version: 1},
		{name: "by tag", spec: apiv1.StartSpec{VMID: "tmpl-1", Tag: "v1"}, tag: "v1", version: 0},
		{name: "by number", spec: apiv1.StartSpec{VMID: "tmpl-1", Version: ptr(0)}, tag: "v1", version: 0},
		{name: "into a group", spec: apiv1.StartSpec{VMID: "tmpl-1", GroupID: group.ID}, tag: "v2", version: 1},
		{name: "unknown tag", spec: apiv1.StartSpec{VMID: "tmpl-1", Tag: "v9"}, err: "v9"},
		{name: "unknown number", spec: apiv1.StartSpec{VMID: "tmpl-1", Version: ptr(7)}, err: "version"},
		{name: "unknown group", spec: apiv1.StartSpec{VMID: "tmpl-1", GroupID: "nope"}, err: "group_id"},
		{name: "unknown node", spec: apiv1.StartSpec{VMID: "tmpl-1", NodeID: "nope"}, err: "node_id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.spec.Count = 2
			ids, err := c.svc.StartInstances(ctx, tc.spec)
			if tc.err != "" {
				if err == nil || (fieldOf(err) != tc.err && !strings.Contains(err.Error(), tc.err)) {
					t.Fatalf("error %v, want one about %s", err, tc.err)
				}
				return
			}
			if err != nil || len(ids) != 2 || ids[0] == ids[1] {
				t.Fatalf("ids %v, %v", ids, err)
			}
			for _, id := range ids {
				r := c.get(t, id)
				if r.State != apiv1.StateScheduling || r.Tag != tc.tag || r.Version == nil || *r.Version != tc.version ||
					r.VMID != "tmpl-1" || r.Arch != apiv1.ArchARM64 || r.GroupID != tc.spec.GroupID ||
					r.AnkaRegistry != "http://registry:8089" || r.CrTime.IsZero() {
					t.Fatalf("stored %+v", r.Instance)
				}
			}
		})
	}
	if _, err := c.svc.StartInstances(ctx, apiv1.StartSpec{VMID: "no-such-template", Count: 1}); err == nil {
		t.Fatal("a start of an unknown template was accepted")
	}
}

// TestStartNamesAndScripts: name templates expand at start ($index, the
// template) and at placement ($node_name); a script is stored once for
// all the start's instances and handed whole to the node.
func TestStartNamesAndScripts(t *testing.T) {
	ctx := context.Background()
	c := newCloud(t, controller.Config{})
	script := []byte("#!/bin/sh\necho hello\n")
	ids, err := c.svc.StartInstances(ctx, apiv1.StartSpec{VMID: "tmpl-1", Count: 2,
		NameTemplate: "$template_name-$index-$node_name", StartupScript: script})
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		if r := c.get(t, id); r.Name != []string{"mac-0-$node_name", "mac-1-$node_name"}[i] {
			t.Fatalf("instance %d named %q", i, r.Name)
		}
	}
	a, b := c.get(t, ids[0]), c.get(t, ids[1])
	if a.Spec.ScriptRef == "" || a.Spec.ScriptRef != b.Spec.ScriptRef || len(a.Spec.StartupScript) != 0 {
		t.Fatalf("script refs %q %q, inline %d bytes: want one stored script", a.Spec.ScriptRef, b.Spec.ScriptRef, len(a.Spec.StartupScript))
	}
	c.place(t)
	got, err := c.svc.WaitAssignments(ctx, "n1", 0)
	if err != nil || len(got.Assignments) != 2 {
		t.Fatalf("assignments %+v, %v", got, err)
	}
	for _, as := range got.Assignments {
		if string(as.Spec.StartupScript) != string(script) {
			t.Fatalf("the node got script %q", as.Spec.StartupScript)
		}
	}
	// $node_name is filled in from the node's first report.
	if err := c.svc.ReportStatus(ctx, apiv1.StatusReport{NodeID: "n1", Instances: []apiv1.InstanceStatus{
		{InstanceID: ids[0], State: apiv1.StatePulling}}}); err != nil {
		t.Fatal(err)
	}
	if r := c.get(t, ids[0]); r.Name != "mac-0-node-one" {
		t.Fatalf("placed instance named %q", r.Name)
	}
}

// TestTerminateByState: an instance that holds no slot ends at once; one
// on a node waits for the node (Terminating, a terminate marker); a
// second terminate changes nothing; an unknown id is not found.
func TestTerminateByState(t *testing.T) {
	ctx := context.Background()
	c := newCloud(t, controller.Config{})
	placed, err := c.svc.StartInstances(ctx, apiv1.StartSpec{VMID: "tmpl-1", Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	c.place(t)
	waiting, err := c.svc.StartInstances(ctx, apiv1.StartSpec{VMID: "tmpl-1", Count: 1, NodeID: "n1", GroupID: ""})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.svc.Terminate(ctx, waiting[0]); err != nil {
		t.Fatal(err)
	}
	if r := c.get(t, waiting[0]); r.State != apiv1.StateTerminated || r.FinishedAt.IsZero() || r.SlotHeld {
		t.Fatalf("a waiting instance after terminate: %s finished %v", r.State, r.FinishedAt)
	}
	if err := c.svc.Terminate(ctx, placed[0]); err != nil {
		t.Fatal(err)
	}
	r := c.get(t, placed[0])
	if r.State != apiv1.StateTerminating || !r.SlotHeld {
		t.Fatalf("a placed instance after terminate: %s slot %v, want Terminating, slot held", r.State, r.SlotHeld)
	}
	got, err := c.svc.WaitAssignments(ctx, "n1", 0)
	if err != nil || len(got.Terminate) != 1 || got.Terminate[0] != placed[0] || len(got.Assignments) != 0 {
		t.Fatalf("the node's assignments: %+v, %v; want the instance to terminate", got, err)
	}
	if err := c.svc.Terminate(ctx, placed[0]); err != nil {
		t.Fatal(err)
	}
	if again := c.get(t, placed[0]); again.State != apiv1.StateTerminating || !again.TS.Equal(r.TS) {
		t.Fatalf("a second terminate changed the record: %s at %v (was %v)", again.State, again.TS, r.TS)
	}
	if err := c.svc.Terminate(ctx, "no-such-instance"); !errors.Is(err, controller.ErrNotFound) {
		t.Fatalf("terminate of an unknown id: %v", err)
	}
}

// TestRestartOnlyAStartedInstance: a restart counts up the assignment's
// restarts (the node's signal); anything but a Started instance is refused.
func TestRestartOnlyAStartedInstance(t *testing.T) {
	ctx := context.Background()
	c := newCloud(t, controller.Config{})
	ids, err := c.svc.StartInstances(ctx, apiv1.StartSpec{VMID: "tmpl-1", Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.svc.Restart(ctx, ids[0]); fieldOf(err) != "instance_id" {
		t.Fatalf("restart of a Scheduling instance: %v", err)
	}
	c.place(t)
	if err := c.svc.ReportStatus(ctx, apiv1.StatusReport{NodeID: "n1", Instances: []apiv1.InstanceStatus{
		{InstanceID: ids[0], State: apiv1.StateStarted}}}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := c.svc.Restart(ctx, ids[0]); err != nil {
			t.Fatal(err)
		}
	}
	got, err := c.svc.WaitAssignments(ctx, "n1", 0)
	if err != nil || len(got.Assignments) != 1 || got.Assignments[0].Restarts != 2 {
		t.Fatalf("assignments after two restarts: %+v, %v", got.Assignments, err)
	}
	if err := c.svc.Restart(ctx, ""); fieldOf(err) != "instance_id" {
		t.Fatalf("restart without an id: %v", err)
	}
	if err := c.svc.Restart(ctx, "nope"); !errors.Is(err, controller.ErrNotFound) {
		t.Fatalf("restart of an unknown id: %v", err)
	}
}

// TestStartInstancesOnce: a repeat with the same Idempotency-Key and body
// answers the first ids and creates nothing; the same key with another
// body is refused; a start that failed frees its key for the retry.
func TestStartInstancesOnce(t *testing.T) {
	ctx := context.Background()
	c := newCloud(t, controller.Config{})
	spec := apiv1.StartSpec{VMID: "tmpl-1", Count: 2}
	first, err := c.svc.StartInstancesOnce(ctx, "job-1", spec)
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.svc.StartInstancesOnce(ctx, "job-1", spec)
	if err != nil || strings.Join(again, ",") != strings.Join(first, ",") {
		t.Fatalf("the repeat answered %v (%v), want %v", again, err, first)
	}
	all, err := c.svc.ListInstances(ctx, controller.InstanceFilter{})
	if err != nil || len(all) != 2 {
		t.Fatalf("%d instances after a repeat (%v), want 2", len(all), err)
	}
	if _, err := c.svc.StartInstancesOnce(ctx, "job-1", apiv1.StartSpec{VMID: "tmpl-1", Count: 3}); fieldOf(err) != "Idempotency-Key" {
		t.Fatalf("the key with another request: %v", err)
	}
	if _, err := c.svc.StartInstancesOnce(ctx, "job-2", apiv1.StartSpec{VMID: "tmpl-1", Tag: "v9", Count: 1}); err == nil {
		t.Fatal("a start of an unknown tag was accepted")
	}
	if ids, err := c.svc.StartInstancesOnce(ctx, "job-2", spec); err != nil || len(ids) != 2 {
		t.Fatalf("the retry after a failed start: %v, %v", ids, err)
	}
	if _, err := c.svc.StartInstancesOnce(ctx, strings.Repeat("k", apiv1.MaxTextField+1), spec); fieldOf(err) != "Idempotency-Key" {
		t.Fatalf("an over-long key: %v", err)
	}
}

// TestUpdateInstance: external id, name and metadata change; what is not
// sent stays; bounds are checked.
func TestUpdateInstance(t *testing.T) {
	ctx := context.Background()
	c := newCloud(t, controller.Config{})
	ids, err := c.svc.StartInstances(ctx, apiv1.StartSpec{VMID: "tmpl-1", Count: 1, Name: "before", ExternalID: "ext-0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.svc.UpdateInstance(ctx, ids[0], apiv1.UpdateRequest{ExternalID: ptr("ext-1")}); err != nil {
		t.Fatal(err)
	}
	if r := c.get(t, ids[0]); r.ExternalID != "ext-1" || r.Name != "before" {
		t.Fatalf("after an external id update: %q %q", r.ExternalID, r.Name)
	}
	if err := c.svc.UpdateInstance(ctx, ids[0], apiv1.UpdateRequest{Name: ptr("after")}); err != nil {
		t.Fatal(err)
	}
	if r := c.get(t, ids[0]); r.ExternalID != "ext-1" || r.Name != "after" {
		t.Fatalf("after a name update: %q %q", r.ExternalID, r.Name)
	}
	if err := c.svc.UpdateInstance(ctx, ids[0], apiv1.UpdateRequest{Name: ptr(strings.Repeat("n", apiv1.MaxTextField+1))}); fieldOf(err) != "name" {
		t.Fatalf("an over-long name: %v", err)
	}
	if err := c.svc.UpdateInstance(ctx, "nope", apiv1.UpdateRequest{Name: ptr("x")}); !errors.Is(err, controller.ErrNotFound) {
		t.Fatalf("an unknown id: %v", err)
	}
}

// TestGroups: names are unique and required, a fallback must exist and not
// be the group itself, and a deleted group leaves no member or fallback.
func TestGroups(t *testing.T) {
	ctx := context.Background()
	c := newCloud(t, controller.Config{})
	a, err := c.svc.CreateGroup(ctx, apiv1.GroupRequest{Name: ptr(" a ")})
	if err != nil || a.Name != "a" {
		t.Fatalf("create: %+v %v", a, err)
	}
	for name, req := range map[string]apiv1.GroupRequest{
		"name":              {Name: ptr("a")},
		"name ":             {Name: ptr("   ")},
		"fallback_group_id": {Name: ptr("b"), FallbackGroupID: ptr("nope")},
	} {
		if _, err := c.svc.CreateGroup(ctx, req); fieldOf(err) != strings.TrimSpace(name) {
			t.Errorf("create %+v: %v, want an error about %s", req, err, name)
		}
	}
	if _, err := c.svc.CreateGroup(ctx, apiv1.GroupRequest{}); fieldOf(err) != "name" {
		t.Errorf("a group without a name: %v", err)
	}
	b, err := c.svc.CreateGroup(ctx, apiv1.GroupRequest{Name: ptr("b"), FallbackGroupID: ptr(a.ID)})
	if err != nil || b.FallbackGroupID != a.ID {
		t.Fatalf("create with fallback: %+v %v", b, err)
	}
	if _, err := c.svc.UpdateGroup(ctx, apiv1.GroupRequest{ID: a.ID, FallbackGroupID: ptr(a.ID)}); fieldOf(err) != "fallback_group_id" {
		t.Fatalf("a fallback to itself: %v", err)
	}
	if _, err := c.svc.UpdateGroup(ctx, apiv1.GroupRequest{ID: b.ID, Name: ptr("a")}); fieldOf(err) != "name" {
		t.Fatalf("a rename onto another group's name: %v", err)
	}
	if g, err := c.svc.UpdateGroup(ctx, apiv1.GroupRequest{ID: b.ID, Description: ptr("slow macs")}); err != nil || g.Description != "slow macs" || g.Name != "b" {
		t.Fatalf("update description: %+v %v", g, err)
	}
	if _, err := c.svc.UpdateGroup(ctx, apiv1.GroupRequest{ID: "nope", Description: ptr("x")}); !errors.Is(err, controller.ErrNotFound) {
		t.Fatalf("update of an unknown group: %v", err)
	}
	if err := c.svc.SetNodeGroups(ctx, a.ID, []string{"n1"}, true); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.st.GetNode(ctx, "n1"); !n.InGroup(a.ID) {
		t.Fatalf("n1 not in group a: %v", n.Groups)
	}
	if err := c.svc.DeleteGroup(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.st.GetNode(ctx, "n1"); n.InGroup(a.ID) {
		t.Fatalf("n1 still in the deleted group: %v", n.Groups)
	}
	groups, err := c.svc.ListGroups(ctx)
	if err != nil || len(groups) != 1 || groups[0].FallbackGroupID != "" {
		t.Fatalf("after deleting the fallback: %+v %v", groups, err)
	}
	if err := c.svc.DeleteGroup(ctx, a.ID); !errors.Is(err, controller.ErrNotFound) {
		t.Fatalf("a second delete: %v", err)
	}
}

// TestAuthorize: root may do anything; a caller in permission groups may
// do what one of them grants (admin grants everything); a caller in none
// gets the default group's permissions, nothing when the default group is
// missing, and everything when no default is set.
func TestAuthorize(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name, def string
		id        controller.Identity
		allowed   []string
	}{
		{"root", "", controller.Identity{Root: true}, []string{apiv1.PermAdmin, apiv1.PermView}},
		{"a viewer", "", controller.Identity{Subjects: []string{"key:viewer"}}, []string{apiv1.PermView}},
		{"a starter in two groups", "", controller.Identity{Subjects: []string{"key:ci", "cert-group:builders"}},
			[]string{apiv1.PermView, apiv1.PermStartInstances, apiv1.PermTerminateInstances}},
		{"an admin", "", controller.Identity{Subjects: []string{"key:boss"}}, []string{apiv1.PermAdmin, apiv1.PermManageNodes, apiv1.PermView}},
		{"unbound, no default", "", controller.Identity{Subjects: []string{"key:stranger"}}, []string{apiv1.PermAdmin, apiv1.PermView}},
		{"unbound, default viewers", "viewers", controller.Identity{Subjects: []string{"key:stranger"}}, []string{apiv1.PermView}},
		{"unbound, default missing", "gone", controller.Identity{Subjects: []string{"key:stranger"}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCloud(t, controller.Config{Auth: controller.AuthConfig{DefaultPermissionGroup: tc.def}})
			for _, g := range []apiv1.PermissionGroup{
				{Name: "viewers", Permissions: []string{apiv1.PermView}, Members: []string{"key:viewer"}},
				{Name: "ci", Permissions: []string{apiv1.PermView, apiv1.PermStartInstances}, Members: []string{"key:ci"}},
				{Name: "builders", Permissions: []string{apiv1.PermTerminateInstances}, Members: []string{"cert-group:builders"}},
				{Name: "admins", Permissions: []string{apiv1.PermAdmin}, Members: []string{"key:boss"}},
			} {
				if _, err := c.svc.PutPermissionGroup(ctx, g, true); err != nil {
					t.Fatal(err)
				}
			}
			for _, perm := range []string{apiv1.PermView, apiv1.PermStartInstances, apiv1.PermTerminateInstances,
				apiv1.PermManageNodes, apiv1.PermManageTemplates, apiv1.PermAdmin} {
				err := c.svc.Authorize(ctx, tc.id, perm)
				want := false
				for _, a := range tc.allowed {
					want = want || a == perm || a == apiv1.PermAdmin
				}
				var denied *controller.PermissionError
				if want && err != nil || !want && !errors.As(err, &denied) {
					t.Errorf("%s: %v, allowed %v", perm, err, want)
				}
			}
		})
	}
}
