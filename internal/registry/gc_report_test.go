package registry_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/registry"
	"github.com/corral-build/corral/internal/registry/storage/faulty"
)

// gcWorkload is a store where a GC pass has every kind of work: records
// and packs to condemn, condemned ones to delete and to rescue, a live
// template and an upload lease. All of it is older than the grace.
func gcWorkload(t *testing.T) (*registry.Registry, *faulty.Backend, string) {
	t.Helper()
	ctx := context.Background()
	r, fb, dir := newFaultyRegistryIn(t, 1)
	r.Grace = time.Hour
	shared := putRandom(t, r, 2)
	for i := range 3 {
		if _, err := r.Commit(ctx, commitReq(fmt.Sprint("t", i), "v1", append(shared, putRandom(t, r, 2)...)...)); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.DeleteTemplate(ctx, mustID(t, r, "t0")); err != nil {
		t.Fatal(err)
	}
	// Loose chunks of a store written before packs: one to condemn now,
	// one after the first pass.
	loose := func(name string) {
		p := filepath.Join(dir, "chunks", name[:2], name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("unreferenced"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	loose("ab" + strings.Repeat("0", 62))
	ageFiles(t, dir, 2*time.Hour)
	if _, err := r.GC(ctx); err != nil { // condemns t0's records and chunks
		t.Fatal(err)
	}
	if err := r.DeleteTemplate(ctx, mustID(t, r, "t1")); err != nil {
		t.Fatal(err)
	}
	loose("cd" + strings.Repeat("0", 62))
	if _, err := r.StartUpload(ctx, "push"); err != nil {
		t.Fatal(err)
	}
	putRandom(t, r, 1)
	ageFiles(t, dir, 2*time.Hour) // t0's condemned are due, t1's are next
	return r, fb, dir
}

// TestGCReportsEveryFault: a storage fault at any call a GC pass makes on
// the store's data ends the pass with that fault (nothing is half-done
// silently), and a clean pass afterwards leaves every live tag whole. Each
// call of each operation under each top-level folder is failed in turn, on
// a fresh store. (The GC lock's own release retries its faults: gc/ is
// left out.)
func TestGCReportsEveryFault(t *testing.T) {
	ctx := context.Background()
	_, _, dir := gcWorkload(t)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	faults := 0
	for _, e := range entries {
		if e.Name() == "gc" || !e.IsDir() {
			continue
		}
		prefix := e.Name() + "/"
		for _, op := range faulty.AllOps {
			for n := 1; ; n++ {
				r, fb, _ := gcWorkload(t)
				fb.FailNth(op, prefix, n)
				_, err := r.GC(ctx)
				if fb.Injected(op) == 0 {
					break // the pass makes fewer such calls
				}
				faults++
				if !errors.Is(err, faulty.ErrInjected) {
					t.Errorf("%s %s #%d failed: GC returned %v, want the fault", op, prefix, n, err)
				}
				fb.Reset()
				if _, err := r.GC(ctx); err != nil {
					t.Fatalf("%s %s #%d: the clean pass after: %v", op, prefix, n, err)
				}
				if err := verifyTag(ctx, r, mustID(t, r, "t2"), "v1"); err != nil {
					t.Fatalf("%s %s #%d: the live tag after: %v", op, prefix, n, err)
				}
			}
		}
	}
	if faults < 20 {
		t.Fatalf("only %d faults injected: the workload gives GC too little to do", faults)
	}
	t.Logf("%d faults injected, each reported", faults)
}

// TestSetArchReportsAFailedCheck: SetArch checks, after its write, that the
// template was not deleted meanwhile; a read error there was taken for
// "still there" and the call answered success.
func TestSetArchReportsAFailedCheck(t *testing.T) {
	ctx := context.Background()
	r, fb := newFaultyRegistry(t, 1)
	res, err := r.Commit(ctx, commitReq("arch", "v1", putRandom(t, r, 1)...))
	if err != nil {
		t.Fatal(err)
	}
	fb.FailNth(faulty.Open, "names/", 1)
	if err := r.SetArch(ctx, res.TemplateID, "amd64"); !errors.Is(err, faulty.ErrInjected) {
		t.Fatalf("SetArch whose check failed: %v, want the fault", err)
	}
	if err := r.SetArch(ctx, res.TemplateID, "amd64"); err != nil {
		t.Fatal(err)
	}
}
