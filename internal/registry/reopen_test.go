package registry_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/registry"
	"github.com/corral-build/corral/internal/registry/chunk"
	"github.com/corral-build/corral/internal/registry/storage/filesystem"
)

// TestReopenedStoreReadsEverythingBack: a registry started again on the same
// store (a restart, another replica) finds every tag and reads every chunk
// back from the packs' own indexes; list and detail carry the last push,
// and a pull is recorded as the template's last pull.
func TestReopenedStoreReadsEverythingBack(t *testing.T) {
	ctx := context.Background()
	r, _, dir := newFaultyRegistryIn(t, 1)
	var ids []string
	for _, tag := range []string{"v1", "v2"} {
		res, err := r.Commit(ctx, commitReq("kept", tag, putRandom(t, r, 3)...))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.TemplateID)
	}
	b, err := filesystem.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	again := registry.New(b, slog.New(slog.NewTextHandler(io.Discard, nil)))
	list, err := again.ListTemplates(ctx)
	if err != nil || len(list) != 1 || list[0].LastPush == 0 {
		t.Fatalf("list after reopening: %+v %v", list, err)
	}
	d, err := again.GetTemplate(ctx, ids[0])
	if err != nil || d.LastPush != list[0].LastPush || d.Versions[1].LastPush != d.LastPush {
		t.Fatalf("detail: %+v %v, want the latest tag's push time as the template's", d, err)
	}
	if d.LastPull != 0 {
		t.Fatalf("pulled before any pull: %d", d.LastPull)
	}
	if _, err := again.TagManifest(ctx, ids[0], "v1"); err != nil {
		t.Fatal(err)
	}
	if d, _ := again.GetTemplate(ctx, ids[0]); d.LastPull == 0 || d.Versions[0].LastPull == 0 || d.Versions[1].LastPull != 0 {
		t.Fatalf("after pulling v1: last pull %d, v1 %d, v2 %d", d.LastPull, d.Versions[0].LastPull, d.Versions[1].LastPull)
	}
	for _, tag := range []string{"v1", "v2"} {
		if err := verifyTag(ctx, again, ids[0], tag); err != nil {
			t.Fatalf("after reopening: %v", err)
		}
	}
}

// TestGCKeepsAnOCIUploadInProgress: the chunks an unfinished OCI upload has
// written are live while its session is: a GC pass between two PATCHes, with
// everything older than the grace, must not take them (the blob would
// finish with holes).
func TestGCKeepsAnOCIUploadInProgress(t *testing.T) {
	ctx := context.Background()
	r, _, dir := newFaultyRegistryIn(t, 1)
	r.Grace = time.Hour
	data := make([]byte, 3*chunk.Size+99)
	rand.Read(data)
	id, err := r.OCIStartUpload(ctx, "vm/slow")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.OCIAppend(ctx, "vm/slow", id, 0, bytes.NewReader(data[:2*chunk.Size])); err != nil {
		t.Fatal(err)
	}
	ageFiles(t, dir, 2*time.Hour)
	for range 2 {
		if _, err := r.GC(ctx); err != nil {
			t.Fatal(err)
		}
		ageFiles(t, dir, 2*time.Hour)
	}
	if _, err := r.OCIAppend(ctx, "vm/slow", id, 2*chunk.Size, bytes.NewReader(data[2*chunk.Size:])); err != nil {
		t.Fatal(err)
	}
	d := sha256Digest(data)
	if err := r.OCIFinishUpload(ctx, "vm/slow", id, d, nil); err != nil {
		t.Fatalf("finishing after GC: %v", err)
	}
	rc, err := r.OCIOpenBlob(ctx, "vm/slow", d, 0, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the blob reads back %d bytes (%v), want %d", len(got), err, len(data))
	}
}

// TestGCRewriteKeepsEveryLiveChunk: a pack mostly dead is rewritten with
// its live chunks; each must read back (the copy skips the dead ones
// between them, so an offset carried wrong corrupts all but the first).
func TestGCRewriteKeepsEveryLiveChunk(t *testing.T) {
	ctx := context.Background()
	r, _, dir := newFaultyRegistryIn(t, 1)
	r.Grace = time.Hour
	ds := putRandom(t, r, 6)
	all, err := r.Commit(ctx, commitReq("all", "v1", ds...))
	if err != nil {
		t.Fatal(err)
	}
	ageFiles(t, dir, 2*time.Hour)
	if s, err := r.GC(ctx); err != nil || s.PacksRewritten == 0 {
		t.Fatalf("merging the small packs: %+v %v", s, err)
	}
	keep, err := r.Commit(ctx, commitReq("keep", "v1", ds[4:]...))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.DeleteTemplate(ctx, all.TemplateID); err != nil {
		t.Fatal(err)
	}
	for range 3 { // condemn, then rewrite the mostly dead pack
		ageFiles(t, dir, 2*time.Hour)
		if _, err := r.GC(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := verifyTag(ctx, r, keep.TemplateID, "v1"); err != nil {
		t.Fatalf("after the rewrite: %v", err)
	}
}
