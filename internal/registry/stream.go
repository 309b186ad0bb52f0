package registry

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/corral-build/corral/internal/registry/chunk"
	"github.com/corral-build/corral/internal/registry/storage"
)

// MaxFetchChunks bounds the chunks one fetch request streams (64 MiB of
// raw data at most), so a pull is many short requests that resume cleanly.
const MaxFetchChunks = 64

// FetchPlan is a checked fetch: every chunk found, in the order the store
// reads them fastest.
type FetchPlan struct {
	items []fetchItem
}

type fetchItem struct {
	digest string
	loc    chunkLoc
	packed bool
}

func (it fetchItem) packedRank() int {
	if it.packed {
		return 1
	}
	return 0
}

// PlanFetch finds every digest (looking afresh for packs other replicas
// wrote); a missing one fails the whole fetch before anything is sent.
func (r *Registry) PlanFetch(ctx context.Context, digests []string) (*FetchPlan, error) {
	if len(digests) == 0 || len(digests) > MaxFetchChunks {
		return nil, &InvalidError{"digests", fmt.Sprintf("%d digests: want 1 to %d per request", len(digests), MaxFetchChunks)}
	}
	lk := newLookups(true)
	plan := &FetchPlan{}
	var missing []string
	for _, d := range digests {
		if !chunk.ValidDigest(d) {
			return nil, &InvalidError{"digests", fmt.Sprintf("%q is not a sha256 hex digest", d)}
		}
		ok, err := r.ensureChunk(ctx, d, lk)
		if err != nil {
			return nil, err
		}
		if !ok {
			missing = append(missing, d)
			continue
		}
		l, packed := r.packs.lookup(d)
		plan.items = append(plan.items, fetchItem{d, l, packed})
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: chunks %s", ErrNotFound, strings.Join(missing, ", "))
	}
	slices.SortFunc(plan.items, func(a, b fetchItem) int {
		if !a.packed || !b.packed {
			return cmp.Compare(b.packedRank(), a.packedRank())
		}
		return cmp.Or(strings.Compare(a.loc.pack.id, b.loc.pack.id), cmp.Compare(a.loc.entry().off, b.loc.entry().off))
	})
	return plan, nil
}

// Stream writes the plan's chunks as frames. Chunks next to each other in
// a pack are read in one sequential stream.
func (r *Registry) Stream(ctx context.Context, plan *FetchPlan, w io.Writer) error {
	buf := make([]byte, chunk.FrameHeader+chunk.MaxEncoded)
	body := buf[chunk.FrameHeader:chunk.FrameHeader]
	var rc io.ReadCloser
	var at int64
	var in *packFile
	defer func() {
		if rc != nil {
			rc.Close()
		}
	}()
	for _, it := range plan.items {
		var enc []byte
		var err error
		e := it.loc.entry()
		switch {
		case it.packed && rc != nil && in == it.loc.pack && at == e.off:
			enc, err = readN(rc, body, int(e.n))
		case it.packed:
			if rc != nil {
				rc.Close()
				rc = nil
			}
			rc, err = r.st.Open(ctx, it.loc.pack.path(), e.off)
			if err == nil {
				in = it.loc.pack
				enc, err = readN(rc, body, int(e.n))
			} else if errors.Is(err, storage.ErrNotFound) {
				enc, err = r.ReadChunk(ctx, it.digest, body) // moved meanwhile
			}
		default:
			enc, err = r.ReadChunk(ctx, it.digest, body)
		}
		if err != nil {
			return fmt.Errorf("chunk %s: %w", it.digest, err)
		}
		at = e.off + int64(len(enc))
		hdr, _ := chunk.AppendFrameHeader(buf[:0], it.digest, len(enc))
		if &hdr[0] != &buf[0] || &enc[0] != &buf[chunk.FrameHeader] {
			// ReadChunk grew its own buffer: send header and body apart.
			if _, err := w.Write(hdr); err != nil {
				return err
			}
			if _, err := w.Write(enc); err != nil {
				return err
			}
			continue
		}
		if _, err := w.Write(buf[:chunk.FrameHeader+len(enc)]); err != nil {
			return err
		}
	}
	return nil
}

func readN(r io.Reader, buf []byte, n int) ([]byte, error) {
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	_, err := io.ReadFull(r, buf)
	return buf, err
}
