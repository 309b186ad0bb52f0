package registry

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/registry/storage"
)

// GCStats reports what a GC run did.
type GCStats struct {
	Referenced     int   // chunks referenced by tags or recent commits
	Condemned      int   // chunks moved to trash this run
	Deleted        int   // chunks deleted from trash (condemned at least Grace ago)
	Rescued        int   // trashed chunks referenced again
	BytesFreed     int64 // bytes of deleted chunks
	UploadsPurged  int   // stale upload leases and unfinished writes removed
	ManifestsFreed int
}

// ErrGCRunning means another replica holds the GC lock.
var ErrGCRunning = errors.New("garbage collection already running")

// GC frees chunks that no tag references, with no read-only window:
//
//   - a chunk is only condemned if unreferenced and untouched since before the
//     oldest live upload lease and the grace period (pushes touch every chunk
//     they rely on, so an in-progress push keeps its chunks);
//   - condemning renames it to trash/, and readers and commits that miss a
//     chunk rescue it from there; it is deleted only by a later run, a grace
//     period after condemnation, and only if still unreferenced.
func (r *Registry) GC(ctx context.Context) (GCStats, error) {
	var s GCStats
	if err := r.lockGC(ctx); err != nil {
		return s, err
	}
	defer r.st.Delete(context.WithoutCancel(ctx), "gc/lock")

	now := time.Now()
	protectSince, purged, err := r.purgeUploads(ctx, now)
	if err != nil {
		return s, err
	}
	s.UploadsPurged = purged
	if n, err := r.st.PurgeIncomplete(ctx, r.UploadTTL); err == nil {
		s.UploadsPurged += n
	}
	referenced, tagManifests, err := r.referencedChunks(ctx, protectSince)
	if err != nil {
		return s, err
	}
	s.Referenced = len(referenced)

	trash, err := r.st.List(ctx, "trash")
	if err != nil {
		return s, err
	}
	for _, p := range trash {
		d := path.Base(p)
		if referenced[d] {
			if err := r.st.Rename(ctx, p, chunkPath(d)); err == nil {
				s.Rescued++
			}
			continue
		}
		info, err := r.st.Stat(ctx, p)
		if err != nil || info.ModTime.After(now.Add(-r.Grace)) {
			continue // rescued meanwhile, or condemned too recently
		}
		if err := r.st.Delete(ctx, p); err != nil {
			return s, err
		}
		s.Deleted++
		s.BytesFreed += info.Size
	}

	chunks, err := r.st.List(ctx, "chunks")
	if err != nil {
		return s, err
	}
	for _, p := range chunks {
		d := path.Base(p)
		if referenced[d] {
			continue
		}
		info, err := r.st.Stat(ctx, p)
		if err != nil || !info.ModTime.Before(protectSince) {
			continue
		}
		if err := r.st.Rename(ctx, p, trashPath(d)); err != nil {
			continue // taken or deleted meanwhile
		}
		_ = r.st.Touch(ctx, trashPath(d)) // the trash clock starts now
		s.Condemned++
	}

	manifests, err := r.st.List(ctx, "manifests")
	if err != nil {
		return s, err
	}
	for _, p := range manifests {
		d := strings.TrimSuffix(path.Base(p), ".json")
		if tagManifests[d] {
			continue
		}
		if info, err := r.st.Stat(ctx, p); err == nil && info.ModTime.Before(protectSince) {
			if r.st.Delete(ctx, p) == nil {
				s.ManifestsFreed++
			}
		}
	}
	r.log.Info("garbage collection done", "referenced", s.Referenced, "condemned", s.Condemned,
		"deleted", s.Deleted, "rescued", s.Rescued, "bytes_freed", s.BytesFreed, "uploads_purged", s.UploadsPurged)
	return s, nil
}

func (r *Registry) lockGC(ctx context.Context) error {
	host, _ := os.Hostname()
	for range 2 {
		err := r.st.Put(ctx, "gc/lock", strings.NewReader(fmt.Sprintf("%s %d", host, os.Getpid())), storage.Exclusive)
		if err == nil {
			return nil
		}
		if !errors.Is(err, storage.ErrExists) {
			return err
		}
		info, serr := r.st.Stat(ctx, "gc/lock")
		if serr != nil || time.Since(info.ModTime) < 6*time.Hour {
			return ErrGCRunning
		}
		_ = r.st.Delete(ctx, "gc/lock") // left by a crashed run
	}
	return ErrGCRunning
}

// purgeUploads deletes leases idle longer than UploadTTL and returns the time
// before which untouched chunks may be condemned.
func (r *Registry) purgeUploads(ctx context.Context, now time.Time) (time.Time, int, error) {
	protectSince := now.Add(-r.Grace)
	paths, err := r.st.List(ctx, "uploads")
	if err != nil {
		return protectSince, 0, err
	}
	purged := 0
	for _, p := range paths {
		info, err := r.st.Stat(ctx, p)
		if err != nil {
			continue
		}
		if info.ModTime.Before(now.Add(-r.UploadTTL)) {
			if r.st.Delete(ctx, p) == nil {
				purged++
			}
			continue
		}
		var lease struct{ Started time.Time }
		if r.readJSON(ctx, p, &lease) == nil && lease.Started.Before(protectSince) {
			protectSince = lease.Started
		}
	}
	return protectSince, purged, nil
}

// referencedChunks marks every chunk of a tagged manifest and of manifests
// written since protectSince (commits that are publishing their tag now).
func (r *Registry) referencedChunks(ctx context.Context, protectSince time.Time) (map[string]bool, map[string]bool, error) {
	tagManifests := map[string]bool{}
	paths, err := r.st.List(ctx, "templates")
	if err != nil {
		return nil, nil, err
	}
	for _, p := range paths {
		if path.Base(path.Dir(p)) != "tags" {
			continue
		}
		var t tagRecord
		if err := r.readJSON(ctx, p, &t); err == nil {
			tagManifests[t.Manifest] = true
		}
	}
	referenced := map[string]bool{}
	if err := r.ociReferenced(ctx, protectSince, referenced); err != nil {
		return nil, nil, fmt.Errorf("gc: oci: %w", err)
	}
	manifests, err := r.st.List(ctx, "manifests")
	if err != nil {
		return nil, nil, err
	}
	for _, p := range manifests {
		d := strings.TrimSuffix(path.Base(p), ".json")
		if !tagManifests[d] {
			info, err := r.st.Stat(ctx, p)
			if err != nil || info.ModTime.Before(protectSince) {
				continue
			}
		}
		var m apiv1.Manifest
		if err := r.readJSON(ctx, p, &m); err != nil {
			return nil, nil, fmt.Errorf("gc: %w", err)
		}
		for _, f := range m.Files {
			for _, c := range f.Chunks {
				if c != "" {
					referenced[c] = true
				}
			}
		}
	}
	return referenced, tagManifests, nil
}
