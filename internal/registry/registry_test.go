package registry_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/registry"
	"github.com/corral-build/corral/internal/registry/chunk"
	"github.com/corral-build/corral/internal/registry/storage/filesystem"
)

func newRegistry(t *testing.T) *registry.Registry {
	b, err := filesystem.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return registry.New(b, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// putRandom stores n random chunks and returns their digests.
func putRandom(t *testing.T, r *registry.Registry, n int) []string {
	t.Helper()
	var out []string
	for range n {
		data := make([]byte, 4096)
		rand.Read(data)
		d := chunk.Digest(data)
		if err := r.PutChunk(context.Background(), d, chunk.Encode(nil, data), nil); err != nil {
			t.Fatal(err)
		}
		out = append(out, d)
	}
	return out
}

func commitReq(name, tag string, digests ...string) apiv1.CommitRequest {
	// Each chunk but the last is a full chunk in the manifest's accounting.
	return apiv1.CommitRequest{Template: name, Tag: tag, Arch: apiv1.ArchARM64, Manifest: apiv1.Manifest{
		ChunkSize: chunk.Size,
		Files:     []apiv1.ManifestFile{{Name: "disk.img", Role: apiv1.RoleImage, Size: int64(len(digests)) * chunk.Size, Chunks: digests}},
	}}
}

func TestCommitValidation(t *testing.T) {
	r := newRegistry(t)
	ok := putRandom(t, r, 1)[0]
	tests := []struct {
		mutate func(*apiv1.CommitRequest)
		field  string
	}{
		{func(c *apiv1.CommitRequest) { c.Template = "../etc" }, "template"},
		{func(c *apiv1.CommitRequest) { c.Tag = "a/b" }, "tag"},
		{func(c *apiv1.CommitRequest) { c.Arch = "sparc" }, "arch"},
		{func(c *apiv1.CommitRequest) { c.Manifest.ChunkSize = 4096 }, "manifest.chunk_size"},
		{func(c *apiv1.CommitRequest) { c.Manifest.Files[0].Name = "../../x" }, "manifest.files[0].name"},
		{func(c *apiv1.CommitRequest) { c.Manifest.Files[0].Role = "weird" }, "manifest.files[0].role"},
		{func(c *apiv1.CommitRequest) { c.Manifest.Files[0].Size = 5 * chunk.Size }, "manifest.files[0].chunks"},
		{func(c *apiv1.CommitRequest) { c.Manifest.Files[0].Chunks[0] = "xyz" }, "manifest.files[0].chunks"},
		{func(c *apiv1.CommitRequest) { c.Manifest.Files = nil }, "manifest.files"},
		// One chunk named 1.2 million times: a "1.2 TB template" was accepted.
		{func(c *apiv1.CommitRequest) {
			c.Manifest.Files[0].Chunks = slices.Repeat([]string{ok}, 1_200_000)
			c.Manifest.Files[0].Size = 1_200_000 * chunk.Size
		}, "manifest.files"},
		{func(c *apiv1.CommitRequest) {
			for i := range registry.MaxTemplateFiles {
				c.Manifest.Files = append(c.Manifest.Files, apiv1.ManifestFile{Name: fmt.Sprint("f", i), Role: apiv1.RoleState})
			}
		}, "manifest.files"},
	}
	for _, tc := range tests {
		req := commitReq("t", "v1", ok)
		tc.mutate(&req)
		_, err := r.Commit(context.Background(), req)
		var inv *registry.InvalidError
		if !errors.As(err, &inv) || inv.Field != tc.field {
			t.Errorf("want invalid %s, got %v", tc.field, err)
		}
	}
	if list, _ := r.ListTemplates(context.Background()); len(list) != 0 {
		t.Fatalf("rejected commits created templates: %v", list)
	}
}

func TestCommitNeedsEveryChunk(t *testing.T) {
	r := newRegistry(t)
	have := putRandom(t, r, 2)
	absent := chunk.Digest([]byte("never uploaded"))
	_, err := r.Commit(context.Background(), commitReq("t", "v1", have[0], absent, "", have[1]))
	var missing *registry.MissingChunksError
	if !errors.As(err, &missing) || len(missing.Digests) != 1 || missing.Digests[0] != absent {
		t.Fatalf("got %v", err)
	}
	if list, _ := r.ListTemplates(context.Background()); len(list) != 0 {
		t.Fatal("a half tag is listed")
	}
}

func TestTagNumbersAndLifecycle(t *testing.T) {
	ctx := context.Background()
	r := newRegistry(t)
	d := putRandom(t, r, 1)
	var wg sync.WaitGroup
	ids := make([]string, 6)
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := r.Commit(ctx, commitReq("busy", fmt.Sprintf("t%d", i), d...))
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = res.TemplateID
		}()
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("concurrent first pushes of one name created several templates: %v", ids)
		}
	}
	tmpl, err := r.GetTemplate(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range tmpl.Versions {
		if v.Number != i { // from 0, as the reference numbers tags
			t.Fatalf("numbers not 0..n-1: %+v", tmpl.Versions)
		}
	}
	// The same commit again (its answer was lost) is the same tag; another
	// content under a taken tag is refused.
	if res, err := r.Commit(ctx, commitReq("busy", "t0", d...)); err != nil || res.Number != tmpl.Versions[tagIndex(tmpl.Versions, "t0")].Number {
		t.Fatalf("the same commit again: %+v, %v; want tag t0's number", res, err)
	}
	other := putRandom(t, r, 1)
	if _, err := r.Commit(ctx, commitReq("busy", "t0", other...)); !errors.Is(err, registry.ErrTagExists) {
		t.Fatalf("another content under a taken tag: %v", err)
	}
	if tmpl, _ := r.GetTemplate(ctx, ids[0]); len(tmpl.Versions) != 6 {
		t.Fatalf("after committing t0 again: %d versions, want 6", len(tmpl.Versions))
	}
	if err := r.Revert(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if err := r.DeleteTag(ctx, ids[0], tmpl.Versions[0].Tag); err != nil {
		t.Fatal(err)
	}
	if err := r.DeleteTag(ctx, ids[0], "nope"); !errors.Is(err, registry.ErrTagNotFound) {
		t.Fatalf("unknown tag: %v", err)
	}
	tmpl, _ = r.GetTemplate(ctx, ids[0])
	if len(tmpl.Versions) != 4 {
		t.Fatalf("after revert and delete: %d versions", len(tmpl.Versions))
	}
	// A template's size is its tags' sum, as the reference answers it (an
	// exporter sees a new tag of the same size grow the template).
	var sum int64
	for _, v := range tmpl.Versions {
		sum += v.Size
	}
	list, err := r.ListTemplates(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("list: %+v %v", list, err)
	}
	if tmpl.Size != sum || list[0].Size != sum || sum != 4*chunk.Size {
		t.Fatalf("template size %d, listed %d; want the tags' sum %d (4 x %d)", tmpl.Size, list[0].Size, sum, chunk.Size)
	}
	if err := r.DeleteTemplate(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := r.GetTemplate(ctx, ids[0]); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("deleted template: %v", err)
	}
	// The name is free again.
	if _, err := r.Commit(ctx, commitReq("busy", "again", d...)); err != nil {
		t.Fatal(err)
	}
}

func TestPutChunkRejectsBadInput(t *testing.T) {
	r := newRegistry(t)
	data := []byte("some chunk")
	good := chunk.Digest(data)
	cases := map[string]error{
		"bad digest":   r.PutChunk(context.Background(), "../../passwd", chunk.Encode(nil, data), nil),
		"mismatch":     r.PutChunk(context.Background(), chunk.Digest([]byte("other")), chunk.Encode(nil, data), nil),
		"zero chunk":   r.PutChunk(context.Background(), chunk.Digest(make([]byte, 100)), chunk.Encode(nil, make([]byte, 100)), nil),
		"oversize":     r.PutChunk(context.Background(), good, make([]byte, chunk.MaxEncoded+1), nil),
		"empty":        r.PutChunk(context.Background(), good, nil, nil),
		"bad encoding": r.PutChunk(context.Background(), good, append([]byte{9}, data...), nil),
	}
	for name, err := range cases {
		var inv *registry.InvalidError
		if !errors.As(err, &inv) {
			t.Errorf("%s: got %v", name, err)
		}
	}
}

func readChunk(t *testing.T, r *registry.Registry, d string) error {
	rc, _, err := r.OpenChunk(context.Background(), d, 0)
	if err != nil {
		return err
	}
	defer rc.Close()
	data, _ := io.ReadAll(rc)
	_, err = chunk.Decode(nil, data, d)
	return err
}

// TestGC: unreferenced chunks go to trash, then away; referenced ones, those
// of an in-progress push (upload lease) and rescued ones stay. Times are
// explicit, not slept for: what was written before the push is a minute
// old, the push's lease began half a minute ago, and every GC pass runs a
// minute ahead of the store's clock (grace 0), so whatever a pass finds was
// written before it.
func TestGC(t *testing.T) {
	ctx := context.Background()
	r, _, dir := newFaultyRegistryIn(t, 1)
	r.Grace = 0
	shared := putRandom(t, r, 2)
	onlyOld := putRandom(t, r, 3)
	if _, err := r.Commit(ctx, commitReq("a", "old", append(shared, onlyOld...)...)); err != nil {
		t.Fatal(err)
	}
	res, err := r.Commit(ctx, commitReq("b", "keep", shared...))
	if err != nil {
		t.Fatal(err)
	}
	_ = res
	// An in-progress push: lease first, then its chunks.
	ageFiles(t, dir, time.Minute)
	r.Now = func() time.Time { return time.Now().Add(-30 * time.Second) }
	if _, err := r.StartUpload(ctx, "push1"); err != nil {
		t.Fatal(err)
	}
	r.Now = func() time.Time { return time.Now().Add(time.Minute) }
	inflight := putRandom(t, r, 2)

	aID := mustID(t, r, "a")
	if err := r.DeleteTemplate(ctx, aID); err != nil {
		t.Fatal(err)
	}
	s, err := r.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.Condemned != 3 {
		t.Fatalf("first run condemned %d chunks, want the 3 only the deleted tag used (%+v)", s.Condemned, s)
	}
	// A reader that needs a condemned chunk rescues it from trash.
	if err := readChunk(t, r, onlyOld[0]); err != nil {
		t.Fatalf("condemned chunk not readable: %v", err)
	}
	s, err = r.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.Deleted != 2 {
		t.Fatalf("second run deleted %d, want 2 (%+v)", s.Deleted, s)
	}
	for _, d := range append(shared, inflight...) {
		if err := readChunk(t, r, d); err != nil {
			t.Fatalf("GC lost a chunk still needed: %v", err)
		}
	}
	if err := readChunk(t, r, onlyOld[1]); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("unreferenced chunk survived two runs: %v", err)
	}
	// The in-progress push commits fine after both runs.
	if _, err := r.Commit(ctx, commitReq("c", "new", inflight...)); err != nil {
		t.Fatal(err)
	}
	// Once the lease ends and the tag is gone, its chunks go too.
	_ = r.EndUpload(ctx, "push1")
	if err := r.DeleteTemplate(ctx, mustID(t, r, "c")); err != nil {
		t.Fatal(err)
	}
	if _, err := r.GC(ctx); err != nil {
		t.Fatal(err)
	}
	if s, _ := r.GC(ctx); s.Deleted != 3 { // 2 inflight + the rescued onlyOld[0]
		t.Fatalf("third cleanup deleted %d (%+v)", s.Deleted, s)
	}
}

func mustID(t *testing.T, r *registry.Registry, name string) string {
	list, err := r.ListTemplates(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, tm := range list {
		if tm.Name == name {
			return tm.ID
		}
	}
	t.Fatalf("no template %s", name)
	return ""
}

// TestCommitStopsWhenTheClientGoesAway: a commit whose request context ends
// stops checking its chunks at once (it used to run to the end).
func TestCommitStopsWhenTheClientGoesAway(t *testing.T) {
	r := newRegistry(t)
	var digests []string
	for i := range 2000 {
		digests = append(digests, fmt.Sprintf("%064x", i+1))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := r.Commit(ctx, commitReq("gone", "v1", digests...))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("commit with its client gone: %v, want context.Canceled", err)
	}
}

func tagIndex(vs []apiv1.TemplateVersion, tag string) int {
	for i, v := range vs {
		if v.Tag == tag {
			return i
		}
	}
	return -1
}
