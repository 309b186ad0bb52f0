package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strings"

	"github.com/corral-build/corral/internal/registry/chunk"
	"github.com/corral-build/corral/internal/registry/storage"
)

// OCI blobs: links per repository, size, mount, reads and deletes.

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
