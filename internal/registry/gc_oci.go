package registry

import (
	"context"
	"errors"
	"path"
	"strings"
	"time"

	"github.com/corral-build/corral/internal/registry/storage"
)

// GC of the OCI store (gc.go runs it with the templates' live set).

// ociLive marks the chunks of live OCI blobs and uploads, and lists as
// candidates for the attic what nothing holds any more: manifests no
// repository links and blob records no linked manifest names (both untouched
// since protectSince). Upload sessions whose lease was purged are dropped.
func (r *Registry) ociLive(ctx context.Context, protectSince time.Time, live *liveSet) error {
	repoPaths, err := r.st.List(ctx, "oci/repos")
	if err != nil {
		return err
	}
	linked := map[string]bool{}
	var blobLinks []string
	for _, p := range repoPaths {
		if strings.Contains(p, "/_manifests/") {
			linked[path.Base(p)] = true
		}
		if strings.Contains(p, "/_layers/") {
			blobLinks = append(blobLinks, p)
		}
	}
	if err := r.dropDanglingReferrers(ctx, repoPaths); err != nil {
		return err
	}
	// Links to blobs that are gone (collected earlier) are dropped.
	for _, p := range blobLinks {
		if _, err := r.st.Stat(ctx, ociBlobPath(path.Base(p))); errors.Is(err, storage.ErrNotFound) {
			_ = r.st.Delete(ctx, p)
		}
	}
	// markManifest keeps the blobs a manifest names; a linked manifest is
	// live itself (taken back from the attic if it was condemned).
	liveBlobs := map[string]bool{}
	markManifest := func(p string, linked bool) error {
		var m ociManifest
		read := r.readJSON
		if linked {
			read = r.readMeta
		}
		err := read(ctx, p, &m)
		if errors.Is(err, storage.ErrNotFound) {
			return nil // never landed, or deleted meanwhile: nothing to keep
		}
		if err != nil {
			return err
		}
		if linked {
			live.meta[p] = true
		}
		blobs, _, _ := manifestReferences(m.Data)
		for _, d := range blobs {
			liveBlobs[strings.TrimPrefix(d, "sha256:")] = true
		}
		return nil
	}
	for hexd := range linked {
		if err := markManifest(ociManifestPath(hexd), true); err != nil {
			return err
		}
	}
	// Manifests no repository links: recent ones (a push under way) keep
	// their blobs, older ones are candidates.
	err = r.unlinkedRecords(ctx, "oci/manifests", protectSince, live, func(p string) error { return markManifest(p, false) })
	if err != nil {
		return err
	}
	markBlob := func(p string, rescue bool) error {
		var b ociBlob
		read := r.readJSON
		if rescue {
			read = r.readMeta
		}
		err := read(ctx, p, &b)
		if errors.Is(err, storage.ErrNotFound) {
			return nil // deleted meanwhile
		}
		if err != nil {
			return err
		}
		live.meta[p] = true
		for _, c := range b.Chunks {
			if c != "" {
				live.chunks[c] = true
			}
		}
		return nil
	}
	for hexd := range liveBlobs {
		if err := markBlob(ociBlobPath(hexd), true); err != nil {
			return err
		}
	}
	// Blob records no linked manifest names: likewise.
	err = r.unlinkedRecords(ctx, "oci/blobs", protectSince, live, func(p string) error { return markBlob(p, false) })
	if err != nil {
		return err
	}
	sessions, err := r.st.List(ctx, "oci/uploads")
	if err != nil {
		return err
	}
	for _, p := range sessions {
		if path.Base(p) != "session.json" {
			continue
		}
		id := path.Base(path.Dir(p))
		_, err := r.st.Stat(ctx, "uploads/"+id+".json")
		if errors.Is(err, storage.ErrNotFound) {
			r.dropOCISession(ctx, id)
			continue
		}
		if err != nil {
			return err
		}
		var u ociUpload
		err = r.readJSON(ctx, p, &u)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		for _, c := range u.Chunks {
			if c != "" {
				live.chunks[c] = true
			}
		}
	}
	return nil
}

// unlinkedRecords goes through the records under prefix that the live set
// does not hold: those untouched since protectSince become candidates for
// the attic, the others are passed to recent.
func (r *Registry) unlinkedRecords(ctx context.Context, prefix string, protectSince time.Time, live *liveSet, recent func(p string) error) error {
	paths, err := r.st.List(ctx, prefix)
	if err != nil {
		return err
	}
	for _, p := range paths {
		if live.meta[p] {
			continue
		}
		isRecent, err := r.recent(ctx, p, protectSince)
		if err != nil {
			return err
		}
		if !isRecent {
			live.candidates = append(live.candidates, p)
			continue
		}
		if err := recent(p); err != nil {
			return err
		}
	}
	return nil
}
