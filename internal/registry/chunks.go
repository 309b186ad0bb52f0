package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/corral-build/corral/internal/registry/chunk"
	"github.com/corral-build/corral/internal/registry/storage"
)

// MaxPackChunks bounds the chunks of one pack upload (highly compressible
// chunks are small, so the byte bound alone would admit very many).
const MaxPackChunks = 4096

// MaxPackRequest bounds a pack upload's body: PackTarget bytes of encoded
// chunks (the last chunk may cross it) plus their frame headers.
const MaxPackRequest = PackTarget + chunk.MaxEncoded + MaxPackChunks*chunk.FrameHeader

// missRefreshAge is how stale the pack index may be when a push asks what is
// missing: a chunk another replica stored in the last moment is sent again,
// which costs bytes, never correctness (commits and reads look afresh).
const missRefreshAge = 2 * time.Second

// lookups carries one request's chunk checks: the packs it touched already
// and whether it has looked afresh for packs other replicas wrote.
type lookups struct {
	touched   map[string]bool
	refreshed bool
	fresh     bool // a miss refreshes the index even if it is recent
}

func newLookups(fresh bool) *lookups { return &lookups{touched: map[string]bool{}, fresh: fresh} }

// Missing returns the digests the store lacks. Present chunks' packs are
// touched, so GC keeps them while the push that asked is under way.
func (r *Registry) Missing(ctx context.Context, digests []string) ([]string, error) {
	_, missing, err := r.present(ctx, digests, newLookups(false))
	return missing, err
}

// present checks digests (each must be valid) with ensureChunk and splits
// them into the stored and the missing.
func (r *Registry) present(ctx context.Context, digests []string, lk *lookups) (stored, missing []string, err error) {
	for _, d := range digests {
		if !chunk.ValidDigest(d) {
			return nil, nil, &InvalidError{"digests", fmt.Sprintf("%q is not a sha256 hex digest", d)}
		}
		ok, err := r.ensureChunk(ctx, d, lk)
		if err != nil {
			return nil, nil, err
		}
		if ok {
			stored = append(stored, d)
		} else {
			missing = append(missing, d)
		}
	}
	return stored, missing, nil
}

// ensureChunk reports whether the chunk is stored, touching its pack (GC
// protection) and taking the pack back from GC's attic if it is there.
func (r *Registry) ensureChunk(ctx context.Context, d string, lk *lookups) (bool, error) {
	for {
		if l, ok := r.packs.lookup(d); ok {
			p := l.pack
			if p.attic.Load() {
				err := r.st.Rename(ctx, p.path(), packDir+"/"+p.id+".pack")
				if err == nil {
					r.packs.setAttic(p, false)
					r.log.Info("pack rescued from GC attic", "pack", p.id, "for", d)
				} else if !errors.Is(err, storage.ErrNotFound) {
					return false, err
				}
			}
			if lk.touched[p.id] {
				return true, nil
			}
			err := r.st.Touch(ctx, p.path())
			if err == nil {
				lk.touched[p.id] = true
				return true, nil
			}
			if !errors.Is(err, storage.ErrNotFound) {
				return false, err
			}
			// The pack moved or is gone: look afresh.
		}
		if lk.refreshed {
			break
		}
		lk.refreshed = true
		maxAge := missRefreshAge
		if lk.fresh {
			maxAge = 0
		}
		if err := r.packs.refresh(ctx, maxAge); err != nil {
			return false, err
		}
	}
	return r.ensureLoose(ctx, d)
}

// looseState records whether the store holds loose chunks (written before
// packs), checked once per process.
type looseState struct {
	mu          sync.Mutex
	known, some bool
}

func (r *Registry) hasLoose(ctx context.Context) (bool, error) {
	r.loose.mu.Lock()
	defer r.loose.mu.Unlock()
	if r.loose.known {
		return r.loose.some, nil
	}
	for _, dir := range []string{"chunks", "trash"} {
		paths, err := r.st.List(ctx, dir)
		if err != nil {
			return false, err
		}
		r.loose.some = r.loose.some || len(paths) > 0
	}
	r.loose.known = true
	return r.loose.some, nil
}

// ensureLoose is ensureChunk for a loose chunk: rescued from GC's trash,
// modification time refreshed. An empty chunk file (what a power loss can
// leave of a chunk written just before it) counts as missing.
func (r *Registry) ensureLoose(ctx context.Context, d string) (bool, error) {
	if some, err := r.hasLoose(ctx); err != nil || !some {
		return false, err
	}
	info, err := r.st.Stat(ctx, chunkPath(d))
	if err == nil && info.Size <= 1 {
		_ = r.st.Delete(ctx, chunkPath(d))
		err = storage.ErrNotFound
	}
	if err == nil {
		err = r.st.Touch(ctx, chunkPath(d))
	}
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, storage.ErrNotFound) {
		return false, err
	}
	if err := r.st.Rename(ctx, trashPath(d), chunkPath(d)); err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return false, nil
		}
		return false, err
	}
	r.log.Info("chunk rescued from GC trash", "digest", d)
	return true, r.st.Touch(ctx, chunkPath(d))
}

// verifyChunk checks an encoded chunk against its digest: the one place the
// registry hashes what a client sent.
func verifyChunk(digest string, encoded, scratch []byte) error {
	if !chunk.ValidDigest(digest) {
		return &InvalidError{"digest", fmt.Sprintf("%q is not a sha256 hex digest", digest)}
	}
	if len(encoded) > chunk.MaxEncoded {
		return &InvalidError{"chunk", fmt.Sprintf("%d bytes, more than the %d-byte limit", len(encoded), chunk.MaxEncoded)}
	}
	raw, err := chunk.Verify(encoded, digest, scratch)
	if err != nil {
		return &InvalidError{"chunk", err.Error()}
	}
	if chunk.IsZero(raw) {
		return &InvalidError{"chunk", "all-zero chunks are implicit; list them as \"\" in the manifest"}
	}
	return nil
}

// PutChunk verifies one encoded chunk and stores it (in a pack of its own;
// clients send many at once with PutChunks).
func (r *Registry) PutChunk(ctx context.Context, digest string, encoded []byte, scratch []byte) error {
	if err := verifyChunk(digest, encoded, scratch); err != nil {
		return err
	}
	if ok, err := r.ensureChunk(ctx, digest, newLookups(false)); err != nil || ok {
		return err
	}
	w := r.packs.create(ctx)
	if err := w.add(digest, encoded); err != nil {
		w.abort(err)
		return err
	}
	return w.close()
}

// PackStats reports what a pack upload stored.
type PackStats struct {
	Chunks  int   // chunks in the request
	Stored  int   // chunks written (the rest were present already)
	Encoded int64 // encoded bytes written
	// Resend lists chunks sent as deltas that could not be rebuilt (base
	// gone, or a block signature collision): send them whole.
	Resend []string
}

// PutChunks reads a stream of chunk frames, verifies each once and writes
// the ones the store lacks into one new pack, published whole when the
// stream ends cleanly; a bad frame or a broken stream publishes nothing.
func (r *Registry) PutChunks(ctx context.Context, body io.Reader) (PackStats, error) {
	var s PackStats
	var d deltaBufs
	w := r.packs.create(ctx)
	buf := make([]byte, 0, chunk.MaxEncoded)
	scratch := make([]byte, 0, chunk.Size)
	fail := func(err error) (PackStats, error) {
		w.abort(err)
		return PackStats{}, err
	}
	for {
		digest, enc, err := chunk.ReadFrame(body, buf)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fail(&InvalidError{"body", fmt.Sprintf("chunk %d: %v", s.Chunks, err)})
		}
		buf = enc[:0]
		if s.Chunks++; s.Chunks > MaxPackChunks {
			return fail(&InvalidError{"body", fmt.Sprintf("more than %d chunks in one request", MaxPackChunks)})
		}
		if base, ok := chunk.IsDelta(enc); ok {
			if _, ok := r.packs.lookup(digest); ok {
				continue
			}
			raw, err := r.rebuild(ctx, base, enc, &d)
			if err != nil {
				if ctx.Err() != nil {
					return fail(ctx.Err())
				}
				s.Resend = append(s.Resend, digest)
				continue
			}
			d.raw = raw[:0]
			if chunk.Digest(raw) != digest || chunk.IsZero(raw) {
				s.Resend = append(s.Resend, digest)
				continue
			}
			enc = chunk.Encode(d.enc, raw)
			d.enc = enc[:0]
		} else if err := verifyChunk(digest, enc, scratch); err != nil {
			var inv *InvalidError
			errors.As(err, &inv)
			return fail(&InvalidError{fmt.Sprintf("body: chunk %d (%s)", s.Chunks-1, digest[:min(12, len(digest))]), inv.Reason})
		}
		if _, ok := r.packs.lookup(digest); ok {
			continue
		}
		if err := w.add(digest, enc); err != nil {
			return fail(err)
		}
		s.Stored++
		s.Encoded += int64(len(enc))
	}
	if s.Chunks == 0 {
		return fail(&InvalidError{"body", "no chunks"})
	}
	if len(s.Resend) > 0 {
		r.log.Info("deltas not rebuilt; the client sends them whole", "chunks", len(s.Resend))
	}
	if err := w.close(); err != nil {
		return PackStats{}, err
	}
	return s, nil
}

// deltaBufs are the buffers rebuilding deltas reuses.
type deltaBufs struct{ base, baseRaw, raw, enc []byte }

// rebuild applies a delta to its base chunk (stored, so verified already).
func (r *Registry) rebuild(ctx context.Context, base string, delta []byte, d *deltaBufs) ([]byte, error) {
	enc, err := r.ReadChunk(ctx, base, d.base)
	if err != nil {
		return nil, err
	}
	d.base = enc[:0]
	if d.baseRaw == nil {
		d.baseRaw = make([]byte, 0, chunk.Size)
	}
	raw, err := chunk.DecodeStored(d.baseRaw, enc)
	if err != nil {
		return nil, err
	}
	return chunk.ApplyDelta(d.raw, delta, raw)
}

// Signatures returns the block signature of each stored chunk named
// (delta pushes compare against it); chunks not stored are left out.
func (r *Registry) Signatures(ctx context.Context, digests []string) (map[string][]uint32, error) {
	if len(digests) > MaxFetchChunks {
		return nil, &InvalidError{"digests", fmt.Sprintf("%d digests: want at most %d per request", len(digests), MaxFetchChunks)}
	}
	out := map[string][]uint32{}
	var buf, raw []byte
	for _, d := range digests {
		if !chunk.ValidDigest(d) {
			return nil, &InvalidError{"digests", fmt.Sprintf("%q is not a sha256 hex digest", d)}
		}
		enc, err := r.ReadChunk(ctx, d, buf)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		buf = enc[:0]
		plain, err := chunk.DecodeStored(raw, enc)
		if err != nil {
			r.log.Warn("stored chunk does not decode", "digest", d, "err", err)
			continue
		}
		out[d] = chunk.Signature(plain)
	}
	return out, nil
}

// OpenChunk returns an encoded chunk from offset, and its encoded size.
func (r *Registry) OpenChunk(ctx context.Context, digest string, offset int64) (io.ReadCloser, int64, error) {
	if !chunk.ValidDigest(digest) {
		return nil, 0, &InvalidError{"digest", fmt.Sprintf("%q is not a sha256 hex digest", digest)}
	}
	if offset < 0 {
		return nil, 0, &InvalidError{"offset", "negative"}
	}
	lk := newLookups(true)
	for range 2 {
		l, ok := r.packs.lookup(digest)
		if !ok {
			break
		}
		if l.pack.attic.Load() { // condemned: a reader takes it back
			if ok, err := r.ensureChunk(ctx, digest, lk); err != nil {
				return nil, 0, fmt.Errorf("chunk %s: %w", digest, err)
			} else if !ok {
				return nil, 0, ErrNotFound
			}
			if l, ok = r.packs.lookup(digest); !ok {
				break
			}
		}
		size := int64(l.entry().n)
		if offset >= size {
			return io.NopCloser(bytes.NewReader(nil)), size, nil
		}
		rc, err := r.packs.open(ctx, l, offset)
		if err == nil {
			return rc, size, nil
		}
		if !errors.Is(err, storage.ErrNotFound) {
			return nil, 0, fmt.Errorf("chunk %s: %w", digest, err)
		}
		// Moved by GC: ensureChunk finds it again (or takes it back).
		if ok, err := r.ensureChunk(ctx, digest, lk); err != nil || !ok {
			if err != nil {
				return nil, 0, fmt.Errorf("chunk %s: %w", digest, err)
			}
			return nil, 0, ErrNotFound
		}
	}
	return r.openLoose(ctx, digest, offset, lk)
}

func (r *Registry) openLoose(ctx context.Context, digest string, offset int64, lk *lookups) (io.ReadCloser, int64, error) {
	info, err := r.st.Stat(ctx, chunkPath(digest))
	if errors.Is(err, storage.ErrNotFound) {
		ok, rerr := r.ensureChunk(ctx, digest, lk)
		if rerr != nil {
			return nil, 0, fmt.Errorf("chunk %s: %w", digest, rerr) // an I/O error is not a 404
		}
		if !ok {
			return nil, 0, ErrNotFound
		}
		if l, ok := r.packs.lookup(digest); ok { // another replica packed it meanwhile
			rc, err := r.packs.open(ctx, l, offset)
			return rc, int64(l.entry().n), err
		}
		info, err = r.st.Stat(ctx, chunkPath(digest))
	}
	if err != nil {
		return nil, 0, err
	}
	rc, err := r.st.Open(ctx, chunkPath(digest), offset)
	return rc, info.Size, err
}

// ReadChunk returns a stored chunk's encoded bytes, appended to buf[:0].
func (r *Registry) ReadChunk(ctx context.Context, digest string, buf []byte) ([]byte, error) {
	rc, size, err := r.OpenChunk(ctx, digest, 0)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	if size > chunk.MaxEncoded {
		return nil, fmt.Errorf("chunk %s: %d bytes stored, over the %d-byte bound", digest, size, chunk.MaxEncoded)
	}
	if int64(cap(buf)) < size {
		buf = make([]byte, 0, size)
	}
	buf = buf[:size]
	if _, err := io.ReadFull(rc, buf); err != nil {
		return nil, fmt.Errorf("chunk %s: %w", digest, err)
	}
	return buf, nil
}
