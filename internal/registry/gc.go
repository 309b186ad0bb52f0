package registry

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/registry/storage"
	"github.com/corral-build/corral/internal/retry"
)

// GCStats reports what a GC run did.
type GCStats struct {
	Referenced     int   // chunks referenced by tags or recent commits
	Condemned      int   // chunks condemned this run (loose ones to trash, packed ones with their pack)
	Deleted        int   // chunks deleted (condemned at least Grace ago)
	Rescued        int   // trashed chunks and records referenced again
	BytesFreed     int64 // bytes of deleted chunks
	UploadsPurged  int   // stale upload leases and unfinished writes removed
	ManifestsFreed int   // manifests and OCI blob records deleted from the attic
	MetaCondemned  int   // manifests and OCI blob records moved to the attic this run
	PacksRewritten int   // packs whose live chunks were copied into new packs
}

// ErrGCRunning means another replica holds the GC lock.
var ErrGCRunning = errors.New("garbage collection already running")

// liveSet is what a GC pass must keep: chunks, and the metadata records
// (template manifests, OCI manifests and blob records) by store path.
type liveSet struct {
	chunks map[string]bool
	meta   map[string]bool
	// candidates are metadata records nothing holds, untouched since
	// protectSince: they go to the attic.
	candidates []string
}

// GC frees chunks and records that no tag references, with no read-only
// window:
//
//   - it aborts on any storage error other than not-found: a record it could
//     not read might be live, so nothing is condemned on a partial view;
//   - a chunk or record is only condemned if unreferenced and untouched since
//     before the oldest live upload lease and the grace period (pushes touch
//     every chunk they rely on, so an in-progress push keeps its chunks);
//   - condemning renames chunks to trash/ and records to attic/, and readers
//     and commits that miss one rescue it from there; it is deleted only by a
//     later run, a grace period after condemnation, and only if still
//     unreferenced.
func (r *Registry) GC(ctx context.Context) (GCStats, error) { return r.GCWithGrace(ctx, r.Grace) }

// GCWithGrace is a GC pass with another grace period: a store running out
// of space frees aborted pushes' chunks and condemned data sooner.
func (r *Registry) GCWithGrace(ctx context.Context, grace time.Duration) (GCStats, error) {
	var s GCStats
	ctx, release, err := r.lockGC(ctx)
	if err != nil {
		return s, err
	}
	defer release()
	s, err = r.gc(ctx, grace)
	if cause := context.Cause(ctx); err != nil && errors.Is(cause, errGCLockLost) {
		err = fmt.Errorf("%w (%w)", cause, err)
	}
	return s, err
}

func (r *Registry) gc(ctx context.Context, grace time.Duration) (GCStats, error) {
	var s GCStats

	now := r.now()
	protectSince, purged, err := r.purgeUploads(ctx, now, grace)
	if err != nil {
		return s, fmt.Errorf("gc: uploads: %w", err)
	}
	s.UploadsPurged = purged
	if n, err := r.st.PurgeIncomplete(ctx, r.UploadTTL); err == nil {
		s.UploadsPurged += n
	}
	live, err := r.liveSet(ctx, protectSince)
	if err != nil {
		return s, err
	}
	s.Referenced = len(live.chunks)
	if err := r.markAtticPacks(ctx, live); err != nil {
		return s, err
	}

	if err := r.sweepAttic(ctx, now.Add(-grace), live, &s); err != nil {
		return s, err
	}
	if err := r.sweepTrash(ctx, now.Add(-grace), live, &s); err != nil {
		return s, err
	}
	if err := r.condemnChunks(ctx, protectSince, live, &s); err != nil {
		return s, err
	}
	if err := r.collectPacks(ctx, protectSince, live, &s); err != nil {
		return s, err
	}
	for _, p := range live.candidates {
		if err := r.condemnMeta(ctx, p); err != nil {
			if errors.Is(err, storage.ErrNotFound) {
				continue // deleted or taken meanwhile
			}
			return s, fmt.Errorf("gc: condemn %s: %w", p, err)
		}
		s.MetaCondemned++
	}
	r.log.Info("garbage collection done", "referenced", s.Referenced, "condemned", s.Condemned,
		"deleted", s.Deleted, "rescued", s.Rescued, "bytes_freed", s.BytesFreed,
		"uploads_purged", s.UploadsPurged, "records_condemned", s.MetaCondemned, "records_freed", s.ManifestsFreed)
	return s, nil
}

// sweepAttic rescues condemned records that are live again and deletes the
// ones condemned at least Grace ago.
func (r *Registry) sweepAttic(ctx context.Context, condemnedBefore time.Time, live liveSet, s *GCStats) error {
	attic, err := r.st.List(ctx, "attic")
	if err != nil {
		return fmt.Errorf("gc: list attic: %w", err)
	}
	for _, p := range attic {
		orig := strings.TrimPrefix(p, "attic/")
		if live.meta[orig] {
			if _, err := r.rescueMeta(ctx, orig); err != nil {
				return fmt.Errorf("gc: rescue %s: %w", orig, err)
			}
			s.Rescued++
			continue
		}
		info, err := r.st.Stat(ctx, p)
		if errors.Is(err, storage.ErrNotFound) {
			continue // rescued meanwhile
		}
		if err != nil {
			return fmt.Errorf("gc: %w", err)
		}
		if info.ModTime.After(condemnedBefore) {
			continue
		}
		if err := r.st.Delete(ctx, p); err != nil {
			return fmt.Errorf("gc: %w", err)
		}
		if pack, ok := r.atticPack(p); ok {
			s.Deleted += pack.deadEntries(live)
			s.BytesFreed += info.Size
			continue
		}
		s.ManifestsFreed++
	}
	return nil
}

func (r *Registry) sweepTrash(ctx context.Context, condemnedBefore time.Time, live liveSet, s *GCStats) error {
	trash, err := r.st.List(ctx, "trash")
	if err != nil {
		return fmt.Errorf("gc: list trash: %w", err)
	}
	for _, p := range trash {
		d := path.Base(p)
		if live.chunks[d] {
			if err := r.st.Rename(ctx, p, chunkPath(d)); err == nil {
				s.Rescued++
			} else if !errors.Is(err, storage.ErrNotFound) {
				return fmt.Errorf("gc: rescue chunk %s: %w", d, err)
			}
			continue
		}
		info, err := r.st.Stat(ctx, p)
		if errors.Is(err, storage.ErrNotFound) {
			continue // rescued meanwhile
		}
		if err != nil {
			return fmt.Errorf("gc: %w", err)
		}
		if info.ModTime.After(condemnedBefore) {
			continue // condemned too recently
		}
		if err := r.st.Delete(ctx, p); err != nil {
			return fmt.Errorf("gc: %w", err)
		}
		s.Deleted++
		s.BytesFreed += info.Size
	}
	return nil
}

func (r *Registry) condemnChunks(ctx context.Context, protectSince time.Time, live liveSet, s *GCStats) error {
	chunks, err := r.st.List(ctx, "chunks")
	if err != nil {
		return fmt.Errorf("gc: list chunks: %w", err)
	}
	for _, p := range chunks {
		d := path.Base(p)
		if live.chunks[d] {
			continue
		}
		if recent, err := r.recent(ctx, p, protectSince); err != nil || recent {
			if err != nil {
				return err
			}
			continue // touched by a push, or gone meanwhile
		}
		if err := r.condemn(ctx, p, trashPath(d)); err != nil {
			if errors.Is(err, storage.ErrNotFound) {
				continue // taken or deleted meanwhile
			}
			return fmt.Errorf("gc: condemn chunk %s: %w", d, err)
		}
		s.Condemned++
	}
	return nil
}

// condemnMeta moves a metadata record to the attic; the attic clock starts now.
func (r *Registry) condemnMeta(ctx context.Context, p string) error {
	return r.condemn(ctx, p, "attic/"+p)
}

// condemn moves a file to the trash or the attic (to) and starts its grace
// there. A file whose time cannot be started goes back: with its old time
// the next sweep would delete it at once, without its grace.
func (r *Registry) condemn(ctx context.Context, from, to string) error {
	if err := r.st.Rename(ctx, from, to); err != nil {
		return err
	}
	if err := r.st.Touch(ctx, to); err != nil {
		if rerr := r.st.Rename(ctx, to, from); rerr != nil && !errors.Is(rerr, storage.ErrNotFound) {
			r.log.Warn("gc: a condemned file could not be taken back after its grace failed to start", "path", from, "err", rerr)
		}
		return fmt.Errorf("start its grace: %w", err)
	}
	return nil
}

// rescueMeta moves a record back from the attic, reporting whether it was there.
func (r *Registry) rescueMeta(ctx context.Context, p string) (bool, error) {
	err := r.st.Rename(ctx, "attic/"+p, p)
	if errors.Is(err, storage.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	r.log.Info("record rescued from GC attic", "path", p)
	return true, nil
}

// readMeta reads a record that GC may have condemned, rescuing it first if so.
func (r *Registry) readMeta(ctx context.Context, p string, v any) error {
	err := r.readJSON(ctx, p, v)
	if !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	ok, rerr := r.rescueMeta(ctx, p)
	if rerr != nil {
		return rerr
	}
	if !ok {
		return err
	}
	return r.readJSON(ctx, p, v)
}

// gcLock is the lease of the replica running GC: its body names the holder
// (host, pid, a token of this run) and the holder renews its modification
// time while it runs. A lock not renewed for GCLockTTL was left by a run
// that died (SIGKILL, OOM, power loss): the next run takes it over.
const gcLock = "gc/lock"

// lockGC takes the GC lease. The returned context ends when the lease can
// no longer be vouched for (another replica took it, or renewals failed for
// too long), so the run stops before another could start; release stops
// the renewals and gives the lock back if it is still this run's.
func (r *Registry) lockGC(ctx context.Context) (context.Context, func(), error) {
	ttl := cmp.Or(r.GCLockTTL, DefaultGCLockTTL)
	host, _ := os.Hostname()
	body := fmt.Sprintf("%s %d %s", host, os.Getpid(), apiv1.NewID())
	for range 2 {
		err := r.st.Put(ctx, gcLock, strings.NewReader(body), storage.Exclusive)
		if err == nil {
			return r.holdGCLock(ctx, body, ttl)
		}
		if !errors.Is(err, storage.ErrExists) {
			return nil, nil, fmt.Errorf("gc: lock: %w", err)
		}
		info, serr := r.st.Stat(ctx, gcLock)
		if serr != nil || time.Since(info.ModTime) < ttl {
			return nil, nil, ErrGCRunning
		}
		holder, _ := r.gcLockHolder(ctx)
		r.log.Warn("taking over a GC lock its holder stopped renewing (that run died)", "holder", holder, "renewed", info.ModTime)
		_ = r.st.Delete(ctx, gcLock)
	}
	return nil, nil, ErrGCRunning
}

// holdGCLock renews the lease every ttl/4 until release. A renewal first
// checks the lock is still this run's; a run that could not renew for half
// the TTL stops, well before another replica may take the lock over.
func (r *Registry) holdGCLock(ctx context.Context, body string, ttl time.Duration) (context.Context, func(), error) {
	leased, lost := context.WithCancelCause(ctx)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(ttl / 4)
		defer t.Stop()
		renewed := time.Now()
		for {
			select {
			case <-stop:
				return
			case <-leased.Done():
				return
			case <-t.C:
			}
			err := func() error {
				rctx, cancel := context.WithTimeout(leased, ttl/4)
				defer cancel()
				holder, err := r.gcLockHolder(rctx)
				if err == nil && holder != body {
					return errGCLockLost
				}
				if err == nil {
					err = r.st.Touch(rctx, gcLock)
				}
				return err
			}()
			switch {
			case errors.Is(err, errGCLockLost), errors.Is(err, storage.ErrNotFound):
				lost(fmt.Errorf("%w: another run holds it now", errGCLockLost))
				return
			case err == nil:
				renewed = time.Now()
			case time.Since(renewed) > ttl/2:
				lost(fmt.Errorf("%w: could not renew it for %s: %v", errGCLockLost, time.Since(renewed).Round(time.Second), err))
				return
			}
		}
	}()
	release := func() {
		close(stop)
		<-done
		if errors.Is(context.Cause(leased), errGCLockLost) {
			return // not ours to delete
		}
		lost(nil)
		// A transient error must not leave the lock held until its TTL.
		err := retry.Policy{Attempts: 5, Initial: 10 * time.Millisecond, Max: time.Second, PerAttempt: time.Minute}.
			Do(context.WithoutCancel(ctx), func(ctx context.Context) error {
				holder, err := r.gcLockHolder(ctx)
				if errors.Is(err, storage.ErrNotFound) || (err == nil && holder != body) {
					return nil
				}
				if err != nil {
					return err
				}
				return r.st.Delete(ctx, gcLock)
			})
		if err != nil {
			r.log.Error("could not release the GC lock; the next run waits for its TTL", "ttl", ttl, "err", err)
		}
	}
	return leased, release, nil
}

// errGCLockLost ends a GC run whose lease it can no longer vouch for.
var errGCLockLost = errors.New("gc: lost the GC lock")

// gcLockHolder reads the lock's body.
func (r *Registry) gcLockHolder(ctx context.Context) (string, error) {
	rc, err := r.st.Open(ctx, gcLock, 0)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, 4096))
	return string(data), err
}

// purgeUploads deletes leases idle longer than UploadTTL and returns the time
// before which untouched chunks may be condemned. A lease it cannot read
// aborts the pass: it might protect a push's chunks.
func (r *Registry) purgeUploads(ctx context.Context, now time.Time, grace time.Duration) (time.Time, int, error) {
	protectSince := now.Add(-grace)
	paths, err := r.st.List(ctx, "uploads")
	if err != nil {
		return protectSince, 0, err
	}
	purged := 0
	for _, p := range paths {
		info, err := r.st.Stat(ctx, p)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return protectSince, purged, err
		}
		if info.ModTime.Before(now.Add(-r.UploadTTL)) {
			if r.st.Delete(ctx, p) == nil {
				purged++
			}
			continue
		}
		var lease struct{ Started time.Time }
		err = r.readJSON(ctx, p, &lease)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return protectSince, purged, err
		}
		if lease.Started.Before(protectSince) {
			protectSince = lease.Started
		}
	}
	return protectSince, purged, nil
}

// liveSet marks every chunk of a tagged manifest and of manifests written
// since protectSince (commits that are publishing their tag now), and of live
// OCI blobs and uploads.
func (r *Registry) liveSet(ctx context.Context, protectSince time.Time) (liveSet, error) {
	live := liveSet{chunks: map[string]bool{}, meta: map[string]bool{}}
	tagged := map[string]bool{}
	paths, err := r.st.List(ctx, "templates")
	if err != nil {
		return live, fmt.Errorf("gc: list templates: %w", err)
	}
	for _, p := range paths {
		if path.Base(path.Dir(p)) != "tags" {
			continue
		}
		var t tagRecord
		err := r.readJSON(ctx, p, &t)
		if errors.Is(err, storage.ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return live, fmt.Errorf("gc: tag %s: %w", p, err)
		}
		tagged[t.Manifest] = true
	}
	// Tagged manifests are read by name (rescuing any in the attic), then
	// the untagged ones that are recent enough to be a commit in progress.
	for d := range tagged {
		if err := r.markManifest(ctx, manifestPath(d), live); err != nil {
			return live, err
		}
	}
	manifests, err := r.st.List(ctx, "manifests")
	if err != nil {
		return live, fmt.Errorf("gc: list manifests: %w", err)
	}
	for _, p := range manifests {
		if live.meta[p] {
			continue
		}
		recent, err := r.recent(ctx, p, protectSince)
		if err != nil {
			return live, err
		}
		if !recent {
			live.candidates = append(live.candidates, p)
			continue
		}
		if err := r.markManifest(ctx, p, live); err != nil {
			return live, err
		}
	}
	if err := r.ociLive(ctx, protectSince, &live); err != nil {
		return live, fmt.Errorf("gc: oci: %w", err)
	}
	return live, nil
}

func (r *Registry) markManifest(ctx context.Context, p string, live liveSet) error {
	var m apiv1.Manifest
	err := r.readMeta(ctx, p, &m)
	if errors.Is(err, storage.ErrNotFound) {
		return nil // an untagged manifest deleted meanwhile, or a tag's that is gone
	}
	if err != nil {
		return fmt.Errorf("gc: %w", err)
	}
	live.meta[p] = true
	for _, f := range m.Files {
		for _, c := range f.Chunks {
			if c != "" {
				live.chunks[c] = true
			}
		}
	}
	return nil
}

// recent reports whether p was written or touched since protectSince; a
// record gone meanwhile counts as recent (it is not a candidate).
func (r *Registry) recent(ctx context.Context, p string, protectSince time.Time) (bool, error) {
	info, err := r.st.Stat(ctx, p)
	if errors.Is(err, storage.ErrNotFound) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("gc: %w", err)
	}
	return !info.ModTime.Before(protectSince), nil
}
