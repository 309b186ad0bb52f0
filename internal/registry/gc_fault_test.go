package registry_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/registry"
	"github.com/corral-build/corral/internal/registry/chunk"
	"github.com/corral-build/corral/internal/registry/storage/faulty"
	"github.com/corral-build/corral/internal/registry/storage/filesystem"
)

func newFaultyRegistry(t *testing.T, seed uint64) (*registry.Registry, *faulty.Backend) {
	r, fb, _ := newFaultyRegistryIn(t, seed)
	return r, fb
}

// newFaultyRegistryIn is newFaultyRegistry that also gives the store's
// directory (to set files' times explicitly).
func newFaultyRegistryIn(t *testing.T, seed uint64) (*registry.Registry, *faulty.Backend, string) {
	t.Helper()
	dir := t.TempDir()
	b, err := filesystem.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	fb := faulty.Wrap(b, seed)
	return registry.New(fb, slog.New(slog.NewTextHandler(io.Discard, nil))), fb, dir
}

// verifyTag pulls a tag's manifest and reads and verifies every chunk.
func verifyTag(ctx context.Context, r *registry.Registry, id, tag string) error {
	m, err := r.TagManifest(ctx, id, tag)
	if err != nil {
		return fmt.Errorf("manifest of %s:%s: %w", id, tag, err)
	}
	for _, f := range m.Manifest.Files {
		for _, d := range f.Chunks {
			if d == "" {
				continue
			}
			rc, _, err := r.OpenChunk(ctx, d, 0)
			if err != nil {
				return fmt.Errorf("%s:%s chunk %s: %w", id, tag, d, err)
			}
			data, err := io.ReadAll(rc)
			rc.Close()
			if err != nil {
				return err
			}
			if _, err := chunk.Decode(nil, data, d); err != nil {
				return fmt.Errorf("%s:%s chunk %s: %w", id, tag, d, err)
			}
		}
	}
	return nil
}

// TestGCAbortsOnTransientTagReadError: one failed read of a tag record used
// to drop the tag from the live set and delete its manifest at once.
func TestGCAbortsOnTransientTagReadError(t *testing.T) {
	ctx := context.Background()
	r, fb := newFaultyRegistry(t, 1)
	r.Grace = 0
	res, err := r.Commit(ctx, commitReq("live", "v1", putRandom(t, r, 3)...))
	if err != nil {
		t.Fatal(err)
	}
	fb.FailNth(faulty.Open, "templates/", 1)
	if _, err := r.GC(ctx); !errors.Is(err, faulty.ErrInjected) {
		t.Fatalf("GC with an unreadable tag record: %v, want the injected error", err)
	}
	for range 3 {
		if _, err := r.GC(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := verifyTag(ctx, r, res.TemplateID, "v1"); err != nil {
		t.Fatalf("a transient read error cost a live tag: %v", err)
	}
}

// TestGCManifestsGoThroughTheAttic: an unreferenced manifest is not deleted
// at once; a reader within the grace period gets it back.
func TestGCManifestsGoThroughTheAttic(t *testing.T) {
	ctx := context.Background()
	r, _ := newFaultyRegistry(t, 2)
	r.Grace = 0
	if _, err := r.Commit(ctx, commitReq("gone", "v1", putRandom(t, r, 1)...)); err != nil {
		t.Fatal(err)
	}
	if err := r.DeleteTemplate(ctx, mustID(t, r, "gone")); err != nil {
		t.Fatal(err)
	}
	s, err := r.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.ManifestsFreed != 0 {
		t.Fatalf("first run: %+v, want the manifest condemned, not freed", s)
	}
	s, err = r.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.ManifestsFreed != 1 {
		t.Fatalf("second run: %+v, want the condemned manifest freed", s)
	}
}

// TestOpenChunkIOErrorIsNotNotFound: an I/O error while rescuing a chunk
// from the trash was joined with ErrNotFound and served as a 404.
func TestOpenChunkIOErrorIsNotNotFound(t *testing.T) {
	ctx := context.Background()
	r, fb := newFaultyRegistry(t, 3)
	r.Grace = 0
	d := putRandom(t, r, 1)
	if _, err := r.Commit(ctx, commitReq("x", "v1", d...)); err != nil {
		t.Fatal(err)
	}
	if err := r.DeleteTemplate(ctx, mustID(t, r, "x")); err != nil {
		t.Fatal(err)
	}
	if s, err := r.GC(ctx); err != nil || s.Condemned != 1 {
		t.Fatalf("GC: %+v %v", s, err)
	}
	fb.FailNth(faulty.Rename, "attic/packs/", 1)
	_, _, err := r.OpenChunk(ctx, d[0], 0)
	if err == nil || errors.Is(err, registry.ErrNotFound) || !errors.Is(err, faulty.ErrInjected) {
		t.Fatalf("OpenChunk with a failing rescue: %v, want the I/O error and not ErrNotFound", err)
	}
	if err := readChunk(t, r, d[0]); err != nil {
		t.Fatalf("after the fault the chunk is rescued: %v", err)
	}
}

// TestGCPropertyUnderFaults runs many GC passes while pushes commit, with a
// random fraction of every storage call failing; afterwards every tag whose
// commit succeeded must pull and verify.
func TestGCPropertyUnderFaults(t *testing.T) {
	for seed := uint64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { gcProperty(t, seed) })
	}
}

func gcProperty(t *testing.T, seed uint64) {
	ctx := context.Background()
	r, fb := newFaultyRegistry(t, seed)
	r.Grace = 0
	// Some history for GC to work on: tags that are deleted, shared chunks.
	shared := putRandom(t, r, 4)
	for i := range 3 {
		if _, err := r.Commit(ctx, commitReq(fmt.Sprint("old", i), "v1", append(shared[:2], putRandom(t, r, 2)...)...)); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.DeleteTemplate(ctx, mustID(t, r, "old0")); err != nil {
		t.Fatal(err)
	}
	for _, op := range faulty.AllOps {
		fb.FailFraction(op, "", 0.04)
	}
	type committed struct{ id, tag string }
	var (
		mu   sync.Mutex
		done []committed
		wg   sync.WaitGroup
	)
	stop := make(chan struct{})
	gcErrs := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := r.GC(ctx); err != nil {
				gcErrs++
			}
		}
	}()
	var pushers sync.WaitGroup
	for p := range 2 {
		pushers.Add(1)
		go func() {
			defer pushers.Done()
			for i := range 8 {
				if c, ok := faultyPush(ctx, r, fmt.Sprintf("t%d", p), fmt.Sprintf("v%d", i), shared); ok {
					mu.Lock()
					done = append(done, c)
					mu.Unlock()
				}
			}
		}()
	}
	pushers.Wait()
	close(stop)
	wg.Wait()
	fb.Reset()
	for range 2 {
		if _, err := r.GC(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if len(done) == 0 {
		t.Fatal("no push committed under faults; the test proves nothing")
	}
	t.Logf("%d tags committed, %d GC passes failed, %d faults injected", len(done), gcErrs, totalInjected(fb))
	for _, c := range done {
		if err := verifyTag(ctx, r, c.id, c.tag); err != nil {
			t.Errorf("committed tag lost: %v", err)
		}
	}
	for _, name := range []string{"old1", "old2"} {
		if err := verifyTag(ctx, r, mustID(t, r, name), "v1"); err != nil {
			t.Errorf("untouched tag lost: %v", err)
		}
	}
}

func totalInjected(fb *faulty.Backend) int {
	n := 0
	for _, op := range faulty.AllOps {
		n += fb.Injected(op)
	}
	return n
}

// faultyPush pushes like the client does (lease, missing chunks, commit),
// retrying each step a few times; ok reports that a commit succeeded.
func faultyPush(ctx context.Context, r *registry.Registry, name, tag string, shared []string) (c struct{ id, tag string }, ok bool) {
	retry := func(f func() error) error {
		var err error
		for range 6 {
			if err = f(); err == nil {
				return nil
			}
		}
		return err
	}
	lease := fmt.Sprintf("%s-%s-%x", name, tag, randBytes(4))
	if retry(func() error { _, err := r.StartUpload(ctx, lease); return err }) != nil {
		return c, false
	}
	defer r.EndUpload(ctx, lease)
	digests := append([]string{}, shared[2:]...)
	for range 3 {
		data := randBytes(4096)
		d := chunk.Digest(data)
		if retry(func() error { return r.PutChunk(ctx, d, chunk.Encode(nil, data), nil) }) != nil {
			return c, false
		}
		digests = append(digests, d)
	}
	err := retry(func() error {
		if _, err := r.Missing(ctx, digests); err != nil {
			return err
		}
		res, err := r.Commit(ctx, commitReq(name, tag, digests...))
		if err != nil {
			return err
		}
		c.id = res.TemplateID
		return nil
	})
	c.tag = tag
	return c, err == nil
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// TestGCLockOfADeadRunIsTakenOver: a registry killed in the middle of GC
// leaves gc/lock behind, which kept every replica from collecting (the
// low-space runs too) for 6 hours. A lock its holder stopped renewing for
// the lock TTL is taken over; one renewed recently is not.
func TestGCLockOfADeadRunIsTakenOver(t *testing.T) {
	dir := t.TempDir()
	b, err := filesystem.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	r := registry.New(b, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx := context.Background()
	lock := filepath.Join(dir, "gc", "lock")
	if err := os.MkdirAll(filepath.Dir(lock), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(lock, []byte("other-host 4242 a-run-that-died"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := r.GC(ctx); !errors.Is(err, registry.ErrGCRunning) {
		t.Fatalf("GC beside a lock renewed a moment ago: %v, want ErrGCRunning", err)
	}
	stale := time.Now().Add(-registry.DefaultGCLockTTL - time.Minute)
	if err := os.Chtimes(lock, stale, stale); err != nil {
		t.Fatal(err)
	}
	if _, err := r.GC(ctx); err != nil {
		t.Fatalf("GC after its lock's holder stopped renewing it: %v", err)
	}
	if _, err := os.Stat(lock); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("GC left its lock behind: %v", err)
	}
}

// TestGCLockIsALease: a run that outlives the lock's TTL keeps its lock (it
// renews it), so another replica does not start a second run; a run whose
// lock was taken over stops, and leaves the new holder's lock alone.
func TestGCLockIsALease(t *testing.T) {
	dir := t.TempDir()
	fsb, err := filesystem.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	discard := slog.New(slog.NewTextHandler(io.Discard, nil))
	fb := faulty.Wrap(fsb, 1)
	a, b := registry.New(fb, discard), registry.New(fsb, discard)
	a.GCLockTTL, b.GCLockTTL = 1500*time.Millisecond, 1500*time.Millisecond

	fb.HangNth(faulty.List, "uploads", 1) // A's run stops there, holding the lock
	done := make(chan error, 1)
	go func() { _, err := a.GC(context.Background()); done <- err }()
	waitFor(t, "A's GC to hold the lock", func() bool { return fb.Calls(faulty.List) > 0 })
	// Until A has renewed its lock six times (one and a half TTLs), B must
	// find it held.
	for touches := fb.Calls(faulty.Touch); fb.Calls(faulty.Touch) < touches+6; {
		if _, err := b.GC(context.Background()); !errors.Is(err, registry.ErrGCRunning) {
			t.Fatalf("B's GC while A's runs past its lock's TTL: %v, want ErrGCRunning", err)
		}
		select {
		case err := <-done:
			t.Fatalf("A's hung GC ended: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	// Another replica takes the lock over (as if A had stalled past the
	// TTL): A's run ends, and its release leaves the new holder's lock.
	other := []byte("other-host 1 the-new-holder")
	if err := os.WriteFile(filepath.Join(dir, "gc", "lock"), other, 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "lost the GC lock") {
			t.Fatalf("A's GC after losing its lock: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("A's GC went on after another replica took its lock over")
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "gc", "lock")); !bytes.Equal(got, other) {
		t.Fatalf("A's release changed the new holder's lock to %q", got)
	}
}

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
