package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/registry/chunk"
	"github.com/corral-build/corral/internal/registry/storage"
)

// The OCI Distribution store lives beside the templates and shares their
// chunks: a blob is a list of 1 MiB chunks (so a disk image pushed with
// oras dedups against the same disk pushed as a template), manifests are
// stored whole, tags and repository membership are small objects.
//
//	oci/blobs/<hex>.json                 ociBlob: size and chunk digests
//	oci/manifests/<hex>.json             ociManifest: media type and bytes
//	oci/repos/<name>/_manifests/<hex>    the repository holds this manifest
//	oci/repos/<name>/_tags/<tag>         the tag's manifest digest (hex)
//	oci/uploads/<id>/session.json        ociUpload: an upload in progress
//	oci/uploads/<id>/tail-<size>         its bytes after the last full chunk
//
// An upload also holds a lease (uploads/<id>.json) like a template push, so
// GC keeps the chunks it has written.

// OCIError is an error of the distribution spec's error format.
type OCIError struct {
	Status  int
	Code    string // BLOB_UNKNOWN, DIGEST_INVALID, ...
	Message string
}

func (e *OCIError) Error() string { return e.Code + ": " + e.Message }

func ociErr(status int, code, format string, args ...any) *OCIError {
	return &OCIError{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// MaxManifest bounds a manifest (the distribution spec suggests 4 MiB).
const MaxManifest = 4 << 20

var (
	repoNamePattern = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagPattern      = apiv1.SafeName(regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`))
)

// CheckRepoName validates a repository name.
func CheckRepoName(name string) error {
	if len(name) > 255 || !repoNamePattern.MatchString(name) {
		return ociErr(http.StatusBadRequest, "NAME_INVALID", "invalid repository name %q", name)
	}
	return nil
}

// ParseDigest accepts "sha256:<64 hex>" and returns the hex part.
func ParseDigest(d string) (string, error) {
	hexPart, ok := strings.CutPrefix(d, "sha256:")
	if !ok || !chunk.ValidDigest(hexPart) {
		return "", ociErr(http.StatusBadRequest, "DIGEST_INVALID", "%q is not a sha256 digest", d)
	}
	return hexPart, nil
}

type ociBlob struct {
	Size   int64    `json:"size"`
	Chunks []string `json:"chunks"` // "" for an all-zero chunk
}

type ociManifest struct {
	MediaType string `json:"media_type"`
	Data      []byte `json:"data"`
}

type ociUpload struct {
	Repo      string    `json:"repo"`
	Size      int64     `json:"size"`
	Chunks    []string  `json:"chunks"`
	HashState []byte    `json:"hash_state"` // sha256 of all Size bytes, marshaled
	Started   time.Time `json:"started"`
}

func ociBlobPath(hexd string) string     { return "oci/blobs/" + hexd + ".json" }
func ociManifestPath(hexd string) string { return "oci/manifests/" + hexd + ".json" }
func ociSessionPath(id string) string    { return "oci/uploads/" + id + "/session.json" }
func ociTailPath(id string, size int64) string {
	return fmt.Sprintf("oci/uploads/%s/tail-%d", id, size)
}
func ociRepoPath(repo string) string { return "oci/repos/" + repo }

// A blob is reachable in a repository through a link, written when it is
// pushed or mounted there or named by a manifest put there. Links of
// repositories written before links existed are made once, from their
// manifests, the first time a blob is missed there (the _links marker).
func ociLinkPath(repo, hexd string) string { return ociRepoPath(repo) + "/_layers/" + hexd }
func ociLinkedMarker(repo string) string   { return ociRepoPath(repo) + "/_links" }

var errUploadUnknown = ociErr(http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN", "no such upload")

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

func (r *Registry) linkBlob(ctx context.Context, repo, hexd string) error {
	if err := r.st.Put(ctx, ociLinkPath(repo, hexd), strings.NewReader(""), storage.Replace); err != nil {
		return fmt.Errorf("link blob %s in %s: %w", hexd, repo, err)
	}
	return nil
}

// repoBlob is ociBlob through repo: the blob must be linked there.
func (r *Registry) repoBlob(ctx context.Context, repo, digest string) (ociBlob, error) {
	hexd, err := ParseDigest(digest)
	if err != nil {
		return ociBlob{}, err
	}
	linked, err := r.blobLinked(ctx, repo, hexd)
	if err != nil {
		return ociBlob{}, err
	}
	if !linked {
		return ociBlob{}, ociErr(http.StatusNotFound, "BLOB_UNKNOWN", "blob %s is not in %s", digest, repo)
	}
	return r.ociBlob(ctx, digest)
}

func (r *Registry) blobLinked(ctx context.Context, repo, hexd string) (bool, error) {
	_, err := r.st.Stat(ctx, ociLinkPath(repo, hexd))
	if err == nil || !errors.Is(err, storage.ErrNotFound) {
		return err == nil, err
	}
	if _, err := r.st.Stat(ctx, ociLinkedMarker(repo)); err == nil || !errors.Is(err, storage.ErrNotFound) {
		return false, err
	}
	if err := r.linkFromManifests(ctx, repo); err != nil {
		return false, err
	}
	_, err = r.st.Stat(ctx, ociLinkPath(repo, hexd))
	if errors.Is(err, storage.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// linkFromManifests links every blob repo's manifests name, once.
func (r *Registry) linkFromManifests(ctx context.Context, repo string) error {
	paths, err := r.st.List(ctx, ociRepoPath(repo)+"/_manifests")
	if err != nil {
		return err
	}
	for _, p := range paths {
		var m ociManifest
		err := r.readMeta(ctx, ociManifestPath(path.Base(p)), &m)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		blobs, _, _ := manifestReferences(m.Data)
		for _, d := range blobs {
			if err := r.linkBlob(ctx, repo, strings.TrimPrefix(d, "sha256:")); err != nil {
				return err
			}
		}
	}
	return r.st.Put(ctx, ociLinkedMarker(repo), strings.NewReader(""), storage.Replace)
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

// OCIBlobSize returns the size of a blob repo links and refreshes its GC
// protection (a client that finds a blob present will reference it next).
func (r *Registry) OCIBlobSize(ctx context.Context, repo, digest string) (int64, error) {
	b, err := r.repoBlob(ctx, repo, digest)
	return b.Size, err
}

func (r *Registry) ociBlob(ctx context.Context, digest string) (ociBlob, error) {
	var b ociBlob
	hexd, err := ParseDigest(digest)
	if err != nil {
		return b, err
	}
	err = r.readMeta(ctx, ociBlobPath(hexd), &b)
	if errors.Is(err, storage.ErrNotFound) {
		return b, ociErr(http.StatusNotFound, "BLOB_UNKNOWN", "blob %s is not in this registry", digest)
	}
	if err == nil {
		_ = r.st.Touch(ctx, ociBlobPath(hexd))
	}
	return b, err
}

// OCIMountBlob links into repo a blob the repository from links (the
// caller's right to read from is the HTTP layer's check). It reports false
// when from does not have it: the client then uploads.
func (r *Registry) OCIMountBlob(ctx context.Context, repo, from, digest string) (bool, error) {
	if CheckRepoName(from) != nil {
		return false, nil
	}
	if _, err := r.repoBlob(ctx, from, digest); err != nil {
		var oe *OCIError
		if errors.As(err, &oe) {
			return false, nil
		}
		return false, err
	}
	hexd, _ := ParseDigest(digest)
	return true, r.linkBlob(ctx, repo, hexd)
}

// OCIOpenBlob streams a blob's bytes [offset, offset+length).
func (r *Registry) OCIOpenBlob(ctx context.Context, repo, digest string, offset, length int64) (io.ReadCloser, error) {
	b, err := r.repoBlob(ctx, repo, digest)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(r.writeBlob(ctx, pw, b, offset, min(b.Size, offset+length)))
	}()
	return pr, nil
}

// OCIWriteBlob checks that repo has the blob, then calls start (which
// sends the response headers) and writes the blob's bytes [offset,
// offset+length) to w straight from the chunk reader.
func (r *Registry) OCIWriteBlob(ctx context.Context, w io.Writer, start func(), repo, digest string, offset, length int64) error {
	b, err := r.repoBlob(ctx, repo, digest)
	if err != nil {
		return err
	}
	start()
	return r.writeBlob(ctx, w, b, offset, min(b.Size, offset+length))
}

// writeBlob writes a blob's bytes [from, to) to w. A reader goroutine
// stays a few chunks ahead (sequential pack reads, decoding), so reading
// and sending overlap. Chunks are not hashed again here: they were
// verified when stored, and an OCI client checks the blob's digest.
func (r *Registry) writeBlob(ctx context.Context, w io.Writer, b ociBlob, from, to int64) error {
	type piece struct {
		data []byte
		buf  *[]byte
		err  error
	}
	const ahead = 4
	free := make(chan *[]byte, ahead+2)
	for range ahead + 2 {
		bb := make([]byte, 0, chunk.MaxEncoded+chunk.Size)
		free <- &bb
	}
	pieces := make(chan piece, ahead)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		defer close(pieces)
		zero := make([]byte, chunk.Size)
		c := r.newCursor()
		defer c.close()
		for i := from / chunk.Size; i < int64(len(b.Chunks)) && i*chunk.Size < to; i++ {
			lo, hi := i*chunk.Size, min((i+1)*chunk.Size, b.Size)
			s, e := max(from, lo)-lo, min(to, hi)-lo
			var p piece
			if d := b.Chunks[i]; d == "" {
				p.data = zero[s:e]
			} else {
				select {
				case p.buf = <-free:
				case <-ctx.Done():
					return
				}
				enc, err := c.read(ctx, d, (*p.buf)[:0:chunk.MaxEncoded])
				var raw []byte
				if err == nil {
					raw, err = chunk.DecodeStored((*p.buf)[chunk.MaxEncoded:chunk.MaxEncoded], enc)
				}
				if err == nil && int64(len(raw)) != hi-lo {
					err = fmt.Errorf("%d bytes, want %d", len(raw), hi-lo)
				}
				if err != nil {
					p.err = fmt.Errorf("blob chunk %s: %w", d, err)
				} else {
					p.data = raw[s:e]
				}
			}
			select {
			case pieces <- p:
			case <-ctx.Done():
				return
			}
			if p.err != nil {
				return
			}
		}
	}()
	for p := range pieces {
		if p.err != nil {
			return p.err
		}
		if _, err := w.Write(p.data); err != nil {
			return err
		}
		if p.buf != nil {
			free <- p.buf
		}
	}
	return ctx.Err()
}

// OCIDeleteBlob unlinks a blob from repo. Other repositories that link it
// keep it; once no manifest names it, GC frees it after the grace period.
func (r *Registry) OCIDeleteBlob(ctx context.Context, repo, digest string) error {
	if _, err := r.repoBlob(ctx, repo, digest); err != nil {
		return err
	}
	hexd, _ := ParseDigest(digest)
	return r.st.Delete(ctx, ociLinkPath(repo, hexd))
}

// OCIPutManifest stores a manifest under repo, tagged when ref is a tag.
// Every blob it names must be present, and every manifest an index names.
func (r *Registry) OCIPutManifest(ctx context.Context, repo, ref, mediaType string, data []byte) (string, error) {
	sum := sha256.Sum256(data)
	hexd := hex.EncodeToString(sum[:])
	digest := "sha256:" + hexd
	isDigest := strings.HasPrefix(ref, "sha256:")
	switch {
	case isDigest && ref != digest:
		return "", ociErr(http.StatusBadRequest, "DIGEST_INVALID", "the manifest's digest is %s, not %s", digest, ref)
	case !isDigest && !tagPattern.MatchString(ref):
		return "", ociErr(http.StatusBadRequest, "TAG_INVALID", "invalid tag %q", ref)
	}
	blobs, manifests, err := manifestReferences(data)
	if err != nil {
		return "", ociErr(http.StatusBadRequest, "MANIFEST_INVALID", "%v", err)
	}
	if mediaType == "" {
		var m struct {
			MediaType string `json:"mediaType"`
		}
		_ = json.Unmarshal(data, &m)
		mediaType = m.MediaType
	}
	for _, d := range blobs {
		if _, err := r.repoBlob(ctx, repo, d); err != nil {
			var oe *OCIError
			if errors.As(err, &oe) {
				return "", ociErr(http.StatusBadRequest, "MANIFEST_BLOB_UNKNOWN", "blob %s is not in %s (push or mount it there first)", d, repo)
			}
			return "", err
		}
	}
	for _, d := range manifests {
		h, err := ParseDigest(d)
		if err != nil {
			return "", err
		}
		if _, err := r.st.Stat(ctx, ociRepoPath(repo)+"/_manifests/"+h); err != nil {
			return "", ociErr(http.StatusBadRequest, "MANIFEST_UNKNOWN", "manifest %s is not in %s", d, repo)
		}
	}
	if err := r.writeJSON(ctx, ociManifestPath(hexd), ociManifest{MediaType: mediaType, Data: data}, storage.Replace); err != nil {
		return "", err
	}
	if err := r.st.Put(ctx, ociRepoPath(repo)+"/_manifests/"+hexd, strings.NewReader(""), storage.Replace); err != nil {
		return "", err
	}
	if !isDigest {
		if err := r.st.Put(ctx, ociRepoPath(repo)+"/_tags/"+ref, strings.NewReader(hexd), storage.Replace); err != nil {
			return "", err
		}
	}
	return digest, nil
}

// manifestReferences returns the blob and manifest digests a manifest or
// index names (config, layers, artifact blobs; child manifests).
func manifestReferences(data []byte) (blobs, manifests []string, err error) {
	type desc struct {
		Digest string `json:"digest"`
	}
	var m struct {
		Config    *desc  `json:"config"`
		Layers    []desc `json:"layers"`
		Blobs     []desc `json:"blobs"`
		Manifests []desc `json:"manifests"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, nil, fmt.Errorf("not JSON: %w", err)
	}
	if m.Config != nil {
		blobs = append(blobs, m.Config.Digest)
	}
	for _, l := range append(m.Layers, m.Blobs...) {
		blobs = append(blobs, l.Digest)
	}
	for _, c := range m.Manifests {
		manifests = append(manifests, c.Digest)
	}
	// Only sha256 digests are stored: refuse others at the edge, so the GC
	// and blob lookups never meet a reference they cannot resolve.
	for _, d := range append(blobs, manifests...) {
		if _, err := ParseDigest(d); err != nil {
			return nil, nil, fmt.Errorf("invalid descriptor digest %q", d)
		}
	}
	return blobs, manifests, nil
}

// OCIGetManifest resolves ref (tag or digest) in repo.
func (r *Registry) OCIGetManifest(ctx context.Context, repo, ref string) (mediaType string, data []byte, digest string, err error) {
	hexd, err := r.resolveRef(ctx, repo, ref)
	if err != nil {
		return "", nil, "", err
	}
	var m ociManifest
	if err := r.readMeta(ctx, ociManifestPath(hexd), &m); err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return "", nil, "", ociErr(http.StatusNotFound, "MANIFEST_UNKNOWN", "manifest %s is not in %s", ref, repo)
		}
		return "", nil, "", err
	}
	return m.MediaType, m.Data, "sha256:" + hexd, nil
}

func (r *Registry) resolveRef(ctx context.Context, repo, ref string) (string, error) {
	unknown := ociErr(http.StatusNotFound, "MANIFEST_UNKNOWN", "manifest %s is not in %s", ref, repo)
	if strings.HasPrefix(ref, "sha256:") {
		hexd, err := ParseDigest(ref)
		if err != nil {
			return "", err
		}
		if _, err := r.st.Stat(ctx, ociRepoPath(repo)+"/_manifests/"+hexd); err != nil {
			return "", unknown
		}
		return hexd, nil
	}
	if !tagPattern.MatchString(ref) {
		return "", ociErr(http.StatusBadRequest, "TAG_INVALID", "invalid tag %q", ref)
	}
	rc, err := r.st.Open(ctx, ociRepoPath(repo)+"/_tags/"+ref, 0)
	if errors.Is(err, storage.ErrNotFound) {
		return "", unknown
	}
	if err != nil {
		return "", err
	}
	defer rc.Close()
	hexd, err := io.ReadAll(io.LimitReader(rc, 128))
	return string(hexd), err
}

// OCIDeleteManifest removes a tag, or a manifest (by digest) and the tags
// pointing to it, from repo.
func (r *Registry) OCIDeleteManifest(ctx context.Context, repo, ref string) error {
	hexd, err := r.resolveRef(ctx, repo, ref)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(ref, "sha256:") {
		return r.st.Delete(ctx, ociRepoPath(repo)+"/_tags/"+ref)
	}
	tags, err := r.OCITags(ctx, repo)
	if err != nil {
		return err
	}
	for _, tag := range tags {
		if h, err := r.resolveRef(ctx, repo, tag); err == nil && h == hexd {
			if err := r.st.Delete(ctx, ociRepoPath(repo)+"/_tags/"+tag); err != nil {
				return err
			}
		}
	}
	return r.st.Delete(ctx, ociRepoPath(repo)+"/_manifests/"+hexd)
}

// OCITags lists repo's tags, sorted.
func (r *Registry) OCITags(ctx context.Context, repo string) ([]string, error) {
	paths, err := r.st.List(ctx, ociRepoPath(repo)+"/_tags")
	if err != nil {
		return nil, err
	}
	tags := make([]string, 0, len(paths))
	for _, p := range paths {
		tags = append(tags, path.Base(p))
	}
	slices.Sort(tags)
	return tags, nil
}

// OCIRepositories lists repositories holding at least one manifest.
func (r *Registry) OCIRepositories(ctx context.Context) ([]string, error) {
	paths, err := r.st.List(ctx, "oci/repos")
	if err != nil {
		return nil, err
	}
	var repos []string
	for _, p := range paths {
		if repo, _, ok := strings.Cut(strings.TrimPrefix(p, "oci/repos/"), "/_manifests/"); ok && !slices.Contains(repos, repo) {
			repos = append(repos, repo)
		}
	}
	slices.Sort(repos)
	return repos, nil
}

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
	// Links to blobs that are gone (collected earlier) are dropped.
	for _, p := range blobLinks {
		if _, err := r.st.Stat(ctx, ociBlobPath(path.Base(p))); errors.Is(err, storage.ErrNotFound) {
			_ = r.st.Delete(ctx, p)
		}
	}
	liveBlobs := map[string]bool{}
	for hexd := range linked {
		var m ociManifest
		err := r.readMeta(ctx, ociManifestPath(hexd), &m)
		if errors.Is(err, storage.ErrNotFound) {
			continue // a link whose manifest never landed: nothing to keep
		}
		if err != nil {
			return err
		}
		live.meta[ociManifestPath(hexd)] = true
		blobs, _, _ := manifestReferences(m.Data)
		for _, d := range blobs {
			liveBlobs[strings.TrimPrefix(d, "sha256:")] = true
		}
	}
	manifests, err := r.st.List(ctx, "oci/manifests")
	if err != nil {
		return err
	}
	for _, p := range manifests {
		if live.meta[p] {
			continue
		}
		recent, err := r.recent(ctx, p, protectSince)
		if err != nil {
			return err
		}
		if !recent {
			live.candidates = append(live.candidates, p)
			continue
		}
		var m ociManifest
		err = r.readJSON(ctx, p, &m)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		blobs, _, _ := manifestReferences(m.Data)
		for _, d := range blobs {
			liveBlobs[strings.TrimPrefix(d, "sha256:")] = true
		}
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
	blobs, err := r.st.List(ctx, "oci/blobs")
	if err != nil {
		return err
	}
	for _, p := range blobs {
		if live.meta[p] {
			continue
		}
		recent, err := r.recent(ctx, p, protectSince)
		if err != nil {
			return err
		}
		if !recent {
			live.candidates = append(live.candidates, p)
			continue
		}
		if err := markBlob(p, false); err != nil {
			return err
		}
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
