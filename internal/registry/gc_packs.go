package registry

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/corral-build/corral/internal/registry/storage"
)

// markAtticPacks makes condemned packs that hold a live chunk live records,
// so the attic sweep takes them back.
func (r *Registry) markAtticPacks(ctx context.Context, live liveSet) error {
	if err := r.packs.refresh(ctx, 0); err != nil {
		return fmt.Errorf("gc: packs: %w", err)
	}
	for _, p := range r.packs.all() {
		if p.attic.Load() && r.packs.holdsOnlyCopy(p, live) {
			live.meta[packDir+"/"+p.id+".pack"] = true
		}
	}
	return nil
}

// holdsOnlyCopy reports whether a condemned pack holds a live chunk that no
// live pack has (the index points at live copies first).
func (x *packIndex) holdsOnlyCopy(p *packFile, live liveSet) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for _, e := range p.entries {
		if l, ok := x.chunks[e.sum]; ok && l.pack.attic.Load() && live.chunks[hex.EncodeToString(e.sum[:])] {
			return true
		}
	}
	return false
}

// deadEntries counts a pack's chunks that are not live.
func (p *packFile) deadEntries(live liveSet) int {
	n := 0
	for _, e := range p.entries {
		if !live.chunks[hex.EncodeToString(e.sum[:])] {
			n++
		}
	}
	return n
}

// all returns the indexed packs.
func (x *packIndex) all() []*packFile {
	x.mu.RLock()
	defer x.mu.RUnlock()
	out := make([]*packFile, 0, len(x.packs))
	for _, p := range x.packs {
		out = append(out, p)
	}
	return out
}

func (p *packFile) liveBytes(live liveSet) int64 {
	var n int64
	for _, e := range p.entries {
		if live.chunks[hex.EncodeToString(e.sum[:])] {
			n += int64(e.n)
		}
	}
	return n
}

// collectPacks condemns packs with no live chunk and rewrites, into new
// packs, the live chunks of packs that are mostly dead or small (an old
// client's one-chunk uploads, a small delta push), then condemns those.
// Packs touched since protectSince are left alone: a push relies on them.
func (r *Registry) collectPacks(ctx context.Context, protectSince time.Time, live liveSet, s *GCStats) error {
	var rewrite []*packFile
	var small int
	for _, p := range r.packs.all() {
		if p.attic.Load() {
			continue
		}
		if recent, err := r.recent(ctx, p.path(), protectSince); err != nil || recent {
			if err != nil {
				return err
			}
			continue // a push relies on it, or it moved meanwhile
		}
		lb := p.liveBytes(live)
		switch {
		case lb == 0:
			if err := r.condemnPack(ctx, p); err != nil {
				return err
			}
			s.Condemned += len(p.entries)
		case lb*2 < p.bytes:
			rewrite = append(rewrite, p)
		case p.bytes < PackTarget/4:
			rewrite = append(rewrite, p)
			small++
		}
	}
	// Unreadable packs (what a power loss can leave) are deleted once old.
	r.packs.mu.Lock()
	bad := make(map[string]string, len(r.packs.bad))
	for id, p := range r.packs.bad {
		bad[id] = p
	}
	r.packs.mu.Unlock()
	for id, p := range bad {
		info, err := r.st.Stat(ctx, p)
		if err == nil && time.Since(info.ModTime) < r.UploadTTL {
			continue
		}
		if err == nil || errors.Is(err, storage.ErrNotFound) {
			err = r.st.Delete(ctx, p)
		}
		if err != nil {
			return fmt.Errorf("gc: unreadable pack %s: %w", p, err)
		}
		r.packs.mu.Lock()
		delete(r.packs.bad, id)
		r.packs.mu.Unlock()
		s.UploadsPurged++
	}
	if len(rewrite) == 1 && small == 1 {
		return nil // one small pack has nothing to merge with
	}
	return r.rewritePacks(ctx, rewrite, live, s)
}

func (r *Registry) condemnPack(ctx context.Context, p *packFile) error {
	if err := r.condemnMeta(ctx, p.path()); err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return nil // moved meanwhile
		}
		return fmt.Errorf("gc: condemn pack %s: %w", p.id, err)
	}
	r.packs.setAttic(p, true)
	return nil
}

// rewritePacks copies the live chunks of packs into new ones, makes them
// durable, then condemns the old packs. Chunks are copied as stored (they
// were verified when they arrived).
func (r *Registry) rewritePacks(ctx context.Context, packs []*packFile, live liveSet, s *GCStats) error {
	if len(packs) == 0 {
		return nil
	}
	w := r.packs.create(ctx)
	defer func() {
		if w != nil {
			w.abort(errors.New("gc rewrite failed"))
		}
	}()
	buf := make([]byte, 0, PackTarget/16)
	for _, p := range packs {
		rc, err := r.st.Open(ctx, p.path(), 0)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("gc: rewrite pack %s: %w", p.id, err)
		}
		var at int64
		for _, e := range p.entries {
			if e.off > at {
				if _, err := io.CopyN(io.Discard, rc, e.off-at); err != nil {
					rc.Close()
					return fmt.Errorf("gc: rewrite pack %s: %w", p.id, err)
				}
			}
			if cap(buf) < int(e.n) {
				buf = make([]byte, e.n)
			}
			chunk := buf[:e.n]
			if _, err := io.ReadFull(rc, chunk); err != nil {
				rc.Close()
				return fmt.Errorf("gc: rewrite pack %s: %w", p.id, err)
			}
			at = e.off + int64(e.n)
			d := hex.EncodeToString(e.sum[:])
			if !live.chunks[d] {
				s.Condemned++
				continue
			}
			if err := w.add(d, chunk); err != nil {
				rc.Close()
				return err
			}
			if w.size() >= PackTarget {
				err := w.close()
				if w = r.packs.create(ctx); err != nil {
					rc.Close()
					return fmt.Errorf("gc: %w", err)
				}
			}
		}
		rc.Close()
	}
	err := w.close()
	w = nil
	if err != nil {
		return fmt.Errorf("gc: %w", err)
	}
	if err := r.st.Sync(ctx); err != nil {
		return fmt.Errorf("gc: %w", err)
	}
	for _, p := range packs {
		if err := r.condemnPack(ctx, p); err != nil {
			return err
		}
	}
	s.PacksRewritten += len(packs)
	return nil
}

// atticPack reports the pack an attic path names, for the sweep's counts.
func (r *Registry) atticPack(p string) (*packFile, bool) {
	id, ok := strings.CutPrefix(p, packAttic+"/")
	if !ok {
		return nil, false
	}
	id, ok = strings.CutSuffix(id, ".pack")
	if !ok {
		return nil, false
	}
	r.packs.mu.RLock()
	defer r.packs.mu.RUnlock()
	pf, ok := r.packs.packs[id]
	return pf, ok
}
