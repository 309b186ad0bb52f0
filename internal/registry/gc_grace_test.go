package registry_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/registry"
	"github.com/corral-build/corral/internal/registry/storage/faulty"
)

// TestGCGraceStartsOrNothingIsCondemned: GC moves what it condemns to the
// trash or attic and touches it there, starting the grace a concurrent push
// relies on. A touch that failed was ignored (loose chunks) or left the file
// condemned with its old time (packs, records): the next sweep deleted it at
// once. Now the file goes back and the run reports the fault.
func TestGCGraceStartsOrNothingIsCondemned(t *testing.T) {
	for _, c := range []struct {
		name, prefix string
		setup        func(t *testing.T, r *registry.Registry, dir string)
	}{
		{"loose chunk", "trash/", func(t *testing.T, r *registry.Registry, dir string) {
			// A store written before packs keeps loose chunks.
			p := filepath.Join(dir, "chunks", "ab", "ab"+strings.Repeat("0", 62))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte("unreferenced"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{"pack", "attic/", func(t *testing.T, r *registry.Registry, dir string) {
			putRandom(t, r, 3) // uploaded, never committed
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			r, fb, dir := newFaultyRegistryIn(t, 1)
			r.Grace = time.Hour
			c.setup(t, r, dir)
			ageFiles(t, dir, 2*time.Hour)

			fb.FailNth(faulty.Touch, c.prefix, 1)
			if _, err := r.GC(ctx); !errors.Is(err, faulty.ErrInjected) {
				t.Fatalf("GC whose grace could not start: %v, want the injected error", err)
			}
			s, err := r.GC(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if s.Deleted != 0 || s.BytesFreed != 0 {
				t.Fatalf("the run after the fault deleted at once what its grace should keep an hour: %+v", s)
			}
		})
	}
}

// ageFiles sets every file's time under dir that long ago.
func ageFiles(t *testing.T, dir string, ago time.Duration) {
	t.Helper()
	old := time.Now().Add(-ago)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		return os.Chtimes(p, old, old)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestReadOfACondemnedPackTakesItBack: after GC condemns a pack, the
// replica's own index knows it is in the attic, so a read of one of its
// chunks takes it back at once, without listing the store again (a stale
// index sent the read to the pack's old place first; here the listing it
// then needs fails).
func TestReadOfACondemnedPackTakesItBack(t *testing.T) {
	ctx := context.Background()
	r, fb, dir := newFaultyRegistryIn(t, 1)
	r.Grace = time.Hour
	ds := putRandom(t, r, 2)
	ageFiles(t, dir, 2*time.Hour)
	s, err := r.GC(ctx)
	if err != nil || s.Condemned != 2 {
		t.Fatalf("GC: %+v %v, want the uncommitted pack's 2 chunks condemned", s, err)
	}
	fb.FailFraction(faulty.List, "", 1)
	for _, d := range ds {
		rc, _, err := r.OpenChunk(ctx, d, 0)
		if err != nil {
			t.Fatalf("chunk %s of the condemned pack: %v", d, err)
		}
		rc.Close()
	}
}

// TestGCLeavesALiveOCIImageAlone: an OCI image a repository tags is live:
// pass after pass, GC neither condemns nor rescues any of its records.
func TestGCLeavesALiveOCIImageAlone(t *testing.T) {
	ctx := context.Background()
	r, _, dir := newFaultyRegistryIn(t, 1)
	r.Grace = time.Hour
	blob := func(data string) string {
		id, err := r.OCIStartUpload(ctx, "vm/live")
		if err != nil {
			t.Fatal(err)
		}
		d := sha256Digest([]byte(data))
		if err := r.OCIFinishUpload(ctx, "vm/live", id, d, strings.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		return d
	}
	cfg, layer := blob(`{"os":"darwin"}`), blob("disk bytes")
	m := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + cfg + `","size":15},` +
		`"layers":[{"mediaType":"application/octet-stream","digest":"` + layer + `","size":10}]}`
	if _, err := r.OCIPutManifest(ctx, "vm/live", "v1", "", []byte(m)); err != nil {
		t.Fatal(err)
	}
	ageFiles(t, dir, 2*time.Hour)
	for pass := range 3 {
		s, err := r.GC(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if s.MetaCondemned != 0 || s.Rescued != 0 || s.Condemned != 0 {
			t.Fatalf("pass %d over a live image: %+v, want nothing condemned or rescued", pass, s)
		}
	}
	if _, data, _, err := r.OCIGetManifest(ctx, "vm/live", "v1"); err != nil || string(data) != m {
		t.Fatalf("the image after GC: %v", err)
	}
}

func sha256Digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}
