package node_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/testenv"
)

// TestNodePullsAndPrefetches: a distribute request makes a node pull a
// template from the registry into its cache (verified, reported in its
// templates) before any instance needs it; an instance then starts from
// the cache.
func TestNodePullsAndPrefetches(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Registry: true})
	dataDir := t.TempDir()
	c.StartNode(testenv.NodeOptions{Name: "puller", Capacity: 1, DataDir: dataDir})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	src := t.TempDir()
	disk := make([]byte, 3<<20+777)
	rand.Read(disk[:1<<20])
	if err := os.WriteFile(filepath.Join(src, "disk.img"), disk, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "config.json"), []byte(`{"arch":"`+runtime.GOARCH+`"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	rc, err := client.NewRegistry(c.Registry.URL)
	if err != nil {
		t.Fatal(err)
	}
	pushed, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "prefetched", Tag: "v1"})
	if err != nil {
		t.Fatal(err)
	}

	req, err := c.Client.Distribute(ctx, apiv1.DistributeRequest{TemplateID: pushed.TemplateID})
	if err != nil {
		t.Fatal(err)
	}
	for {
		d, err := c.Client.Distribution(ctx, req)
		if err == nil && len(d.Nodes) == 1 && !slices.Contains(mapValues(d.Nodes), "pending") {
			if st := mapValues(d.Nodes)[0]; st != "done" {
				t.Fatalf("distribution ended %q", st)
			}
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("distribution not done: %+v %v", d, err)
		case <-time.After(20 * time.Millisecond): // polling the controller
		}
	}
	holds := func() bool {
		nodes, err := c.Client.Nodes(ctx)
		if err != nil || len(nodes) != 1 {
			t.Fatalf("nodes %+v %v", nodes, err)
		}
		return slices.ContainsFunc(nodes[0].Templates, func(tm apiv1.NodeTemplate) bool { return tm.UUID == pushed.TemplateID && tm.Tag == "v1" })
	}
	for !holds() {
		select {
		case <-ctx.Done():
			t.Fatal("the node never reported the prefetched template")
		case <-time.After(20 * time.Millisecond):
		}
	}
	// The cached disk is the pushed one, byte for byte.
	var found bool
	filepath.WalkDir(dataDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Name() == "disk.img" {
			got, _ := os.ReadFile(p)
			found = found || bytes.Equal(got, disk)
		}
		return nil
	})
	if !found {
		t.Fatal("no cached disk.img equals the pushed one")
	}
	ids, err := c.Client.StartInstances(ctx, map[string]any{"vmid": pushed.TemplateID})
	if err != nil {
		t.Fatal(err)
	}
	c.WaitState(ids[0], apiv1.StateStarted, time.Minute)
}

func mapValues(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
