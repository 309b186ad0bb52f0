package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/testenv"
)

// waitImage polls a save-image request until it leaves pending.
func waitImage(t *testing.T, cl *client.Controller, id string, timeout time.Duration) apiv1.Image {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		img, err := cl.Image(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if img.Status != apiv1.ImagePending {
			return img
		}
		if time.Now().After(deadline) {
			t.Fatalf("image request %s still pending after %v: %+v", id, timeout, img)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSaveImage: POST /api/v1/image saves a Started instance as a new tag of
// its template, of another template, or of a new one; the saved files come
// from the VM; the instance is terminated; failures are reported per request.
func TestSaveImage(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Registry: true, Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 4}}})
	rc, _ := client.NewRegistry(c.Registry.URL)
	ctx := context.Background()
	src := newVMDir(t, 0, 1)
	os.WriteFile(filepath.Join(src, "config.json"), []byte(fmt.Sprintf(`{"arch":%q}`, runtimeArch())), 0o644)
	base, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "base", Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	start := func() string {
		t.Helper()
		ids, err := c.Client.StartInstances(ctx, map[string]any{"vmid": base.TemplateID})
		if err != nil {
			t.Fatal(err)
		}
		c.WaitState(ids[0], apiv1.StateStarted, 20*time.Second)
		return ids[0]
	}
	pullFile := func(templateID, tag, name string) string {
		t.Helper()
		dest := t.TempDir()
		if _, err := rc.Pull(ctx, client.PullOptions{TemplateID: templateID, Tag: tag, Dest: dest}); err != nil {
			t.Fatalf("pull %s %s: %v", templateID, tag, err)
		}
		data, err := os.ReadFile(filepath.Join(dest, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}

	// A new tag of the instance's own template; a pre-save script runs first.
	id := start()
	script := base64.StdEncoding.EncodeToString([]byte("echo cleaning up"))
	req, err := c.Client.SaveImage(ctx, apiv1.ImageRequest{ID: id, Tag: "v2", Description: "after job 42", Script: script})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.SaveImage(ctx, apiv1.ImageRequest{ID: id, Tag: "v3"}); err == nil || !strings.Contains(err.Error(), "already pending") &&
		!strings.Contains(err.Error(), "only a Started instance") {
		t.Errorf("second save of one instance: %v", err)
	}
	img := waitImage(t, c.Client, req, 30*time.Second)
	if img.Status != apiv1.ImageDone || img.TemplateID != base.TemplateID || img.Tag != "v2" || img.InstanceID != id {
		t.Fatalf("image %+v", img)
	}
	c.WaitState(id, apiv1.StateTerminated, 10*time.Second)
	tmpl, _ := rc.Template(ctx, base.TemplateID)
	if len(tmpl.Versions) != 2 || tmpl.Versions[1].Tag != "v2" || tmpl.Versions[1].Description != "after job 42" {
		t.Fatalf("template after save: %+v", tmpl.Versions)
	}
	if got := pullFile(base.TemplateID, "v2", "saved.img"); !strings.Contains(got, id) {
		t.Fatalf("saved.img %q does not name the instance", got)
	}
	if pullFile(base.TemplateID, "v2", "nvram") != pullFile(base.TemplateID, "v1", "nvram") {
		t.Fatal("unchanged files differ between the tags")
	}

	// A new template, suspended (state files included).
	id = start()
	req, err = c.Client.SaveImage(ctx, apiv1.ImageRequest{ID: id, Tag: "t1", NewTemplateName: "derived", Suspend: &flexTrue})
	if err != nil {
		t.Fatal(err)
	}
	img = waitImage(t, c.Client, req, 30*time.Second)
	if img.Status != apiv1.ImageDone || img.TemplateID == "" || img.TemplateID == base.TemplateID || img.TemplateName != "derived" {
		t.Fatalf("new template image %+v", img)
	}
	if d, _ := rc.Template(ctx, img.TemplateID); len(d.Versions) != 1 || len(d.Versions[0].StateFiles) != 1 {
		t.Fatalf("derived template %+v", d)
	}

	// revert_before_push replaces the target's latest tag.
	id = start()
	req, _ = c.Client.SaveImage(ctx, apiv1.ImageRequest{ID: id, Tag: "t2", TargetVMID: img.TemplateID, RevertBeforePush: true})
	if img := waitImage(t, c.Client, req, 30*time.Second); img.Status != apiv1.ImageDone {
		t.Fatalf("revert_before_push image %+v", img)
	}
	if d, _ := rc.Template(ctx, img.TemplateID); len(d.Versions) != 1 || d.Versions[0].Tag != "t2" {
		t.Fatalf("after revert_before_push: %+v", d.Versions)
	}

	// A failing pre-save script: the save goes on and says so (the
	// reference's default), its result reported.
	id = start()
	req, _ = c.Client.SaveImage(ctx, apiv1.ImageRequest{ID: id, Tag: "anyway", Script: "echo disk full >&2; exit 3"})
	img = waitImage(t, c.Client, req, 30*time.Second)
	if img.Status != apiv1.ImageDone || !strings.Contains(img.Message, "saved anyway") || img.ScriptResult == nil || img.ScriptResult.ReturnCode != 3 {
		t.Fatalf("failed script, saved anyway: %+v", img)
	}
	view := ok(t, "GET", c.Controllers[0].URL+"/api/v1/image?id="+req, "").(map[string]any)
	if view["id"] != req || view["request"].(map[string]any)["RequestId"] != req || view["error"] != nil ||
		view["script_result"].(map[string]any)["return_code"] != 3.0 {
		t.Fatalf("image view %v", view)
	}
	// With cancel_on_script_failure it fails the request; the VM keeps running.
	id = start()
	req, _ = c.Client.SaveImage(ctx, apiv1.ImageRequest{ID: id, Tag: "bad", Script: "echo disk full >&2; exit 3", CancelOnScriptFailure: true})
	img = waitImage(t, c.Client, req, 30*time.Second)
	if img.Status != apiv1.ImageError || !strings.Contains(img.Message, "exit code 3: disk full") {
		t.Fatalf("failed script image %+v", img)
	}
	if v := ok(t, "GET", c.Controllers[0].URL+"/api/v1/image?id="+req, "").(map[string]any); v["error"] != img.Message {
		t.Fatalf("image view error %v", v["error"])
	}
	if in, _ := c.Client.Instance(ctx, id); in.State != apiv1.StateStarted {
		t.Fatalf("instance after a failed pre-save script: %s", in.State)
	}

	// Bad requests name the field.
	for _, tc := range []struct {
		req  apiv1.ImageRequest
		want string
	}{
		{apiv1.ImageRequest{ID: id, Tag: "v1"}, "template base already has tag v1"},
		{apiv1.ImageRequest{ID: id, Tag: "x", TargetVMID: "nope"}, apiv1.MsgNotInRegistry},
		{apiv1.ImageRequest{ID: id, Tag: "x", NewTemplateName: "base"}, `a template named "base" exists`},
		{apiv1.ImageRequest{ID: "nope", Tag: "x"}, apiv1.MsgNotFound},
		{apiv1.ImageRequest{ID: id, Tag: "x", RevertTag: "v1"}, "revert_tag: not supported"},
		{apiv1.ImageRequest{ID: id, Tag: "x", DoSuspendTest: true}, "do_suspend_sanity_test: not supported"},
	} {
		if _, err := c.Client.SaveImage(ctx, tc.req); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want %q", tc.req, err, tc.want)
		}
	}
	// A terminated instance cannot be saved.
	c.Client.Terminate(ctx, id)
	c.WaitState(id, apiv1.StateTerminated, 10*time.Second)
	if _, err := c.Client.SaveImage(ctx, apiv1.ImageRequest{ID: id, Tag: "late"}); err == nil || !strings.Contains(err.Error(), "only a Started instance") {
		t.Errorf("save of a terminated instance: %v", err)
	}
	list := ok(t, "GET", c.Controllers[0].URL+"/api/v1/image", "").([]any)
	if len(list) != 5 {
		t.Errorf("GET /api/v1/image lists %d requests, want 5", len(list))
	}
}

var flexTrue = apiv1.FlexBool(true)

// TestSaveImageWithRegistryAuth: with the registry guarded, a node saves an
// instance with a push token the controller grants it only while it has a
// save to do (it pushed with its pull token, and the save failed).
func TestSaveImageWithRegistryAuth(t *testing.T) {
	c := authedCloud(t, false)
	ctx := context.Background()
	rc, _ := client.NewRegistry(c.Registry.URL)
	rc.UseRootToken("s3cret")
	src := newVMDir(t, 0, 1)
	os.WriteFile(filepath.Join(src, "config.json"), []byte(fmt.Sprintf(`{"arch":%q}`, runtimeArch())), 0o644)
	base, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "base", Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	ids, err := c.Client.StartInstances(ctx, map[string]any{"vmid": base.TemplateID})
	if err != nil {
		t.Fatal(err)
	}
	c.WaitState(ids[0], apiv1.StateStarted, 20*time.Second)
	req, err := c.Client.SaveImage(ctx, apiv1.ImageRequest{ID: ids[0], Tag: "v2"})
	if err != nil {
		t.Fatal(err)
	}
	if img := waitImage(t, c.Client, req, 30*time.Second); img.Status != apiv1.ImageDone {
		t.Fatalf("save with registry auth: %+v", img)
	}
	detail, err := rc.Template(ctx, base.TemplateID)
	if err != nil || len(detail.Versions) != 2 {
		t.Fatalf("versions after the save: %+v %v", detail.Versions, err)
	}
}
