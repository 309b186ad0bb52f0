package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/registry/chunk"
	"github.com/corral-build/corral/internal/registry/storage"
)

// OCI blob uploads: sessions, their chunks written as they arrive (one
// writer per session, claims per offset across replicas), and the final
// digest check.

// OCIStartUpload opens a blob upload session in repo.
func (r *Registry) OCIStartUpload(ctx context.Context, repo string) (string, error) {
	id := apiv1.NewID()
	started, err := r.StartUpload(ctx, id)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	state, _ := h.(encoding.BinaryMarshaler).MarshalBinary()
	return id, r.writeJSON(ctx, ociSessionPath(id), ociUpload{Repo: repo, HashState: state, Started: started}, storage.Replace)
}

func (r *Registry) ociSession(ctx context.Context, repo, id string) (ociUpload, error) {
	var u ociUpload
	if !validName.MatchString(id) {
		return u, errUploadUnknown
	}
	err := r.readJSON(ctx, ociSessionPath(id), &u)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && u.Repo != repo) {
		return u, errUploadUnknown
	}
	return u, err
}

// OCIUploadSize returns how many bytes an upload holds.
func (r *Registry) OCIUploadSize(ctx context.Context, repo, id string) (int64, error) {
	u, err := r.ociSession(ctx, repo, id)
	return u.Size, err
}

// OCIAppend adds body to an upload. start is where the client says the
// bytes begin (-1 if it did not say); it must be the current size.
func (r *Registry) OCIAppend(ctx context.Context, repo, id string, start int64, body io.Reader) (int64, error) {
	u, release, err := r.claimSession(ctx, repo, id, start)
	if err != nil {
		return u.Size, err
	}
	err = r.ociWrite(ctx, id, &u, body, false)
	release()
	if err != nil {
		return 0, err
	}
	return u.Size, nil
}

// claimStale is how old a claim must be before another writer may take it
// over: its writer crashed mid-write.
const claimStale = 10 * time.Minute

// claimSession makes the caller the only writer of upload id from its
// current size on, and returns the session as of that claim. Writers that
// race for one offset (concurrent PATCHes, or a PATCH racing the final PUT)
// get one winner; the others get 416, as for a chunk at the wrong offset.
// The claim is an exclusive object per starting offset, so this holds
// across registry replicas sharing one store; release frees it once the
// session is written. A writer re-reads the session after winning a claim,
// so one that read it before an earlier writer moved it on is refused.
func (r *Registry) claimSession(ctx context.Context, repo, id string, start int64) (ociUpload, func(), error) {
	u, err := r.ociSession(ctx, repo, id)
	if err != nil {
		return u, nil, err
	}
	wrongOffset := func(u ociUpload, start int64) error {
		return ociErr(http.StatusRequestedRangeNotSatisfiable, "BLOB_UPLOAD_INVALID",
			"chunk starts at %d but the upload holds %d bytes", start, u.Size)
	}
	if start >= 0 && start != u.Size {
		return u, nil, wrongOffset(u, start)
	}
	from := u.Size
	claim := fmt.Sprintf("oci/uploads/%s/claim-%d", id, from)
	err = r.st.Put(ctx, claim, strings.NewReader(""), storage.Exclusive)
	if errors.Is(err, storage.ErrExists) {
		// Taken by a writer that is still at it, or finished (the session
		// then moved on), or crashed long ago (take it over).
		info, serr := r.st.Stat(ctx, claim)
		if serr == nil && time.Since(info.ModTime) > claimStale {
			_ = r.st.Delete(ctx, claim)
			err = r.st.Put(ctx, claim, strings.NewReader(""), storage.Exclusive)
		}
	}
	if errors.Is(err, storage.ErrExists) {
		return u, nil, ociErr(http.StatusRequestedRangeNotSatisfiable, "BLOB_UPLOAD_INVALID",
			"another request is writing this upload from byte %d; ask for its size and resume", from)
	}
	if err != nil {
		return u, nil, fmt.Errorf("upload %s: claim: %w", id, err)
	}
	release := func() { _ = r.st.Delete(context.WithoutCancel(ctx), claim) }
	// Re-read under the claim: a writer that won this offset before us has
	// moved the session on.
	if u, err = r.ociSession(ctx, repo, id); err != nil || u.Size != from {
		release()
		if err == nil {
			err = wrongOffset(u, from)
		}
		return u, nil, err
	}
	return u, release, nil
}

// ociWrite streams body into u: full chunks are stored as they fill, the
// remainder becomes the new tail (or, when final, the last chunk). The
// session is rewritten last, so a crash leaves the previous state intact.
func (r *Registry) ociWrite(ctx context.Context, id string, u *ociUpload, body io.Reader, final bool) error {
	r.TouchUpload(ctx, id)
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(u.HashState); err != nil {
		return fmt.Errorf("upload %s: hash state: %w", id, err)
	}
	buf := make([]byte, 0, chunk.Size)
	oldTail := ociTailPath(id, u.Size)
	if u.Size%chunk.Size != 0 {
		rc, err := r.st.Open(ctx, oldTail, 0)
		if err != nil {
			return fmt.Errorf("upload %s: tail: %w", id, err)
		}
		buf, err = io.ReadAll(io.LimitReader(rc, chunk.Size))
		rc.Close()
		if err != nil {
			return fmt.Errorf("upload %s: tail: %w", id, err)
		}
		buf = slices.Grow(buf, chunk.Size-len(buf))
	}
	// Full chunks go to a chunk store on a goroutine of its own (their
	// hashes, encoding, packs), so the blob's hash here and theirs there
	// use two cores; the session is written only after its packs landed.
	cs := r.startChunkStore(ctx, id)
	if body != nil {
		for {
			n, err := io.ReadFull(body, buf[len(buf):chunk.Size])
			h.Write(buf[len(buf) : len(buf)+n])
			buf = buf[:len(buf)+n]
			u.Size += int64(n)
			if len(buf) == chunk.Size {
				buf = cs.put(buf)
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				break
			}
			if err != nil {
				cs.finish()
				return fmt.Errorf("upload %s: read body: %w", id, err)
			}
			if cs.failed.Load() {
				break // finish reports why
			}
		}
	}
	if final && len(buf) > 0 {
		buf = cs.put(buf)
	}
	digests, err := cs.finish()
	if err != nil {
		return err
	}
	u.Chunks = append(u.Chunks, digests...)
	state, _ := h.(encoding.BinaryMarshaler).MarshalBinary()
	u.HashState = state
	if len(buf) > 0 {
		if err := r.st.Put(ctx, ociTailPath(id, u.Size), bytes.NewReader(buf), storage.Replace); err != nil {
			return fmt.Errorf("upload %s: tail: %w", id, err)
		}
	}
	if err := r.writeJSON(ctx, ociSessionPath(id), u, storage.Replace); err != nil {
		return err
	}
	if oldTail != ociTailPath(id, u.Size) {
		_ = r.st.Delete(ctx, oldTail)
	}
	return nil
}

// chunkStore stores an upload's full chunks in order, on its own goroutine.
type chunkStore struct {
	in      chan []byte
	free    chan []byte
	done    chan error
	failed  atomic.Bool
	digests []string
}

func (r *Registry) startChunkStore(ctx context.Context, id string) *chunkStore {
	cs := &chunkStore{in: make(chan []byte, 2), free: make(chan []byte, 3), done: make(chan error, 1)}
	for range cap(cs.free) {
		cs.free <- make([]byte, 0, chunk.Size)
	}
	go func() { cs.done <- cs.run(ctx, r, id) }()
	return cs
}

// put hands over a full (or final) chunk and returns an empty buffer.
func (cs *chunkStore) put(buf []byte) []byte {
	cs.in <- buf
	return <-cs.free
}

// finish waits for every chunk handed over; it returns their digests ("" for
// zero chunks) in order.
func (cs *chunkStore) finish() ([]string, error) {
	close(cs.in)
	return cs.digests, <-cs.done
}

func (cs *chunkStore) run(ctx context.Context, r *Registry, id string) error {
	var enc []byte
	var pack *packWriter
	var failure error
	lk := newLookups(false)
	store := func(buf []byte) (string, error) {
		if chunk.IsZero(buf) {
			return "", nil
		}
		d := chunk.Digest(buf)
		ok, err := r.ensureChunk(ctx, d, lk)
		if err != nil || ok {
			return d, err
		}
		if pack == nil {
			pack = r.packs.create(ctx)
		}
		enc = chunk.Encode(enc, buf)
		if err := pack.add(d, enc); err != nil {
			return d, err
		}
		if pack.size() >= PackTarget {
			err := pack.close()
			pack = nil
			return d, err
		}
		return d, nil
	}
	for buf := range cs.in {
		if failure == nil {
			d, err := store(buf)
			if err != nil {
				failure = fmt.Errorf("upload %s: %w", id, err)
				cs.failed.Store(true)
			}
			cs.digests = append(cs.digests, d)
		}
		cs.free <- buf[:0]
	}
	if pack != nil {
		if failure != nil {
			pack.abort(failure)
		} else if err := pack.close(); err != nil {
			failure = fmt.Errorf("upload %s: %w", id, err)
		}
	}
	return failure
}

// OCIFinishUpload adds the last bytes, checks the whole blob against digest
// and publishes it.
func (r *Registry) OCIFinishUpload(ctx context.Context, repo, id, digest string, body io.Reader) error {
	hexd, err := ParseDigest(digest)
	if err != nil {
		return err
	}
	u, release, err := r.claimSession(ctx, repo, id, -1)
	if err != nil {
		return err
	}
	err = r.ociWrite(ctx, id, &u, body, true)
	release()
	if err != nil {
		return err
	}
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(u.HashState); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != hexd {
		r.OCICancelUpload(ctx, repo, id)
		return ociErr(http.StatusBadRequest, "DIGEST_INVALID", "the upload's digest is sha256:%s, not %s", got, digest)
	}
	// Chunks land unsynced; make them durable before the blob points at them.
	if err := r.st.Sync(ctx); err != nil {
		return err
	}
	if err := r.writeJSON(ctx, ociBlobPath(hexd), ociBlob{Size: u.Size, Chunks: u.Chunks}, storage.Replace); err != nil {
		return err
	}
	if err := r.linkBlob(ctx, repo, hexd); err != nil {
		return err
	}
	r.OCICancelUpload(ctx, repo, id)
	return nil
}

// OCICancelUpload drops an upload session and its lease.
func (r *Registry) OCICancelUpload(ctx context.Context, repo, id string) error {
	if _, err := r.ociSession(ctx, repo, id); err != nil {
		return err
	}
	r.dropOCISession(ctx, id)
	return nil
}

func (r *Registry) dropOCISession(ctx context.Context, id string) {
	paths, _ := r.st.List(ctx, "oci/uploads/"+id)
	for _, p := range paths {
		_ = r.st.Delete(ctx, p)
	}
	_ = r.st.Delete(ctx, "uploads/"+id+".json")
}
