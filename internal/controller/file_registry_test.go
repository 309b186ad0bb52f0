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
	"github.com/corral-build/corral/internal/testenv"
)

// TestFileRegistry: the template list a controller serves without a
// registry: tags deleted, reverted (the latest, to a tag, to a number),
// templates deleted, each change written whole to the file and read back.
func TestFileRegistry(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "sub", "templates.json")
	f := controller.NewFileRegistry(path)
	if list, err := f.ListTemplates(ctx); err != nil || len(list) != 0 {
		t.Fatalf("no file yet: %v %v", list, err)
	}
	vs := func(tags ...string) []apiv1.TemplateVersion {
		var out []apiv1.TemplateVersion
		for i, tag := range tags {
			out = append(out, apiv1.TemplateVersion{Tag: tag, Number: i})
		}
		return out
	}
	data, _ := json.Marshal([]apiv1.TemplateDetail{
		{Template: apiv1.Template{ID: "a", Name: "alpha"}, Versions: vs("v0", "v1", "v2", "v3")},
		{Template: apiv1.Template{ID: "b", Name: "beta"}, Versions: vs("only")},
	})
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	tags := func(id string) string {
		t.Helper()
		d, err := controller.NewFileRegistry(path).GetTemplate(ctx, id) // read from the file again
		if err != nil {
			return err.Error()
		}
		var out []string
		for _, v := range d.Versions {
			out = append(out, v.Tag)
		}
		return strings.Join(out, ",")
	}
	if err := f.Revert(ctx, "a"); err != nil || tags("a") != "v0,v1,v2" {
		t.Fatalf("revert: %v %s", err, tags("a"))
	}
	if err := f.DeleteTemplate(ctx, "a", "v1"); err != nil || tags("a") != "v0,v2" {
		t.Fatalf("delete a tag: %v %s", err, tags("a"))
	}
	var noTag *controller.NoSuchTagError
	if err := f.DeleteTemplate(ctx, "a", "v9"); !errors.As(err, &noTag) {
		t.Fatalf("delete an unknown tag: %v", err)
	}
	if err := f.RevertTo(ctx, "a", "v0", -1); err != nil || tags("a") != "v0" {
		t.Fatalf("revert to a tag: %v %s", err, tags("a"))
	}
	if err := f.RevertTo(ctx, "a", "", 5); !errors.As(err, &noTag) {
		t.Fatalf("revert to an unknown number: %v", err)
	}
	if err := f.RevertTo(ctx, "a", "", 0); err != nil || tags("a") != "v0" {
		t.Fatalf("revert to number 0: %v %s", err, tags("a"))
	}
	if err := f.RevertTo(ctx, "a", "", -1); err != nil || tags("a") != "" {
		t.Fatalf("revert without tag or number (the latest): %v %s", err, tags("a"))
	}
	if err := f.Revert(ctx, "a"); err == nil {
		t.Fatal("a revert of a template without tags succeeded")
	}
	if err := f.DeleteTemplate(ctx, "b", ""); err != nil {
		t.Fatal(err)
	}
	list, err := controller.NewFileRegistry(path).ListTemplates(ctx)
	if err != nil || len(list) != 1 || list[0].ID != "a" {
		t.Fatalf("after deleting b: %+v %v", list, err)
	}
	if err := f.DeleteTemplate(ctx, "b", ""); !errors.Is(err, controller.ErrNotInRegistry) {
		t.Fatalf("delete an unknown template: %v", err)
	}
	if _, err := f.GetTemplate(ctx, "zz"); !errors.Is(err, controller.ErrNotInRegistry) {
		t.Fatalf("get an unknown template: %v", err)
	}
	if err := os.WriteFile(path, []byte("not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := f.Ping(ctx); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("a broken file: %v, want an error naming it", err)
	}
	if d, err := f.Disk(ctx); err != nil || d.Total <= 0 {
		t.Fatalf("disk: %+v %v", d, err)
	}
}

// TestStatus: the status names the registry nodes use (or none) and says
// whether the controller reaches its template source.
func TestStatus(t *testing.T) {
	ctx := context.Background()
	c := newCloud(t, controller.Config{RegistryURL: "http://registry:8089"})
	if st := c.svc.Status(ctx); st.Status != "Running" || st.RegistryAddress != "http://registry:8089" || st.RegistryStatus != "Running" {
		t.Fatalf("status %+v", st)
	}
	_, st := testenv.StoreAt(t, "")
	path := filepath.Join(t.TempDir(), "templates.json")
	if err := os.WriteFile(path, []byte("{broken"), 0o644); err != nil {
		t.Fatal(err)
	}
	broken := controller.New(st, controller.NewFileRegistry(path), controller.Config{}, testenv.Logger(t))
	if s := broken.Status(ctx); s.RegistryAddress != "none" || s.RegistryStatus != "FAIL" {
		t.Fatalf("status with an unreadable template source: %+v", s)
	}
}
