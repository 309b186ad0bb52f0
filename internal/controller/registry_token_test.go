package controller_test

import (
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/controller"
)

// TestRegistryTokenGrants: a token holds what its caller may do, the rest
// of what was asked left out: root everything; a node pull, and push only
// to the template it is saving; a stranger nothing.
func TestRegistryTokenGrants(t *testing.T) {
	ctx := context.Background()
	c := newCloud(t, controller.Config{Auth: controller.AuthConfig{Enabled: true, RootToken: "s3cret"}})
	join, err := c.svc.Join(ctx, apiv1.JoinRequest{Report: apiv1.NodeReport{NodeID: "saver", NodeName: "saver", Capacity: 1}})
	if err != nil {
		t.Fatal(err)
	}
	grants := func(header string, scopes ...string) map[string]string {
		t.Helper()
		resp, err := c.svc.RegistryToken(ctx, header, nil, scopes)
		if err != nil {
			t.Fatalf("token for %.20s: %v", header, err)
		}
		claims, err := c.svc.RegistryKey().Verify(resp.Token, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, a := range claims.Access {
			out[a.Name] = strings.Join(a.Actions, ",")
		}
		return out
	}
	root := "Basic " + base64.StdEncoding.EncodeToString([]byte("root:s3cret"))
	if g := grants(root, "repository:vm/a:pull,push,delete"); g["vm/a"] != "pull,push,delete" {
		t.Fatalf("root: %v", g)
	}
	node := "Bearer " + join.NodeToken
	if g := grants(node, "repository:vm/a:pull,push", "repository:*:pull,push"); g["vm/a"] != "pull" || g["*"] != "pull" {
		t.Fatalf("a node that saves nothing: %v", g)
	}
	ids, err := c.svc.StartInstances(ctx, apiv1.StartSpec{VMID: "tmpl-1", Count: 1, NodeID: "saver"})
	if err != nil {
		t.Fatal(err)
	}
	c.place(t)
	if err := c.st.CreateImage(ctx, apiv1.Image{RequestID: "r1", InstanceID: ids[0], NodeID: "saver", TemplateName: "vm/a", Status: apiv1.ImagePending},
		apiv1.ImageSave{RequestID: "r1", InstanceID: ids[0], TemplateName: "vm/a", Tag: "v2"}); err != nil {
		t.Fatal(err)
	}
	g := grants(node, "repository:vm/a:pull,push", "repository:vm/b:pull,push", "repository:*:push")
	if g["vm/a"] != "pull,push" || g["vm/b"] != "pull" || g["*"] != "push" {
		t.Fatalf("a node saving vm/a: %v", g)
	}
	if _, err := c.svc.RegistryToken(ctx, "Basic "+base64.StdEncoding.EncodeToString([]byte("root:wrong")), nil,
		[]string{"repository:vm/a:pull"}); !errors.Is(err, controller.ErrAuth) {
		t.Fatalf("a wrong root token: %v", err)
	}
	if _, err := c.svc.RegistryToken(ctx, root, nil, []string{"repository:vm/a:steal"}); fieldOf(err) != "scope" {
		t.Fatalf("a bad scope: %v", err)
	}
}
