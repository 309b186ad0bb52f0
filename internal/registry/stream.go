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
	stored, missing, err := r.present(ctx, digests, newLookups(true))
	if err != nil {
		return nil, err
	}
	plan := &FetchPlan{}
	for _, d := range stored {
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
	c := r.newCursor()
	defer c.close()
	for _, it := range plan.items {
		enc, err := c.read(ctx, it.digest, buf[chunk.FrameHeader:chunk.FrameHeader])
		if err != nil {
			return fmt.Errorf("chunk %s: %w", it.digest, err)
		}
		hdr, _ := chunk.AppendFrameHeader(buf[:0], it.digest, len(enc))
		if &enc[0] != &buf[chunk.FrameHeader] { // read into a buffer of its own
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

// cursor reads stored chunks one after another, keeping a pack open while
// the reads are adjacent in it (a blob or a fetch in file order is then
// one sequential read per pack).
type cursor struct {
	r  *Registry
	rc io.ReadCloser
	in *packFile
	at int64
}

func (r *Registry) newCursor() *cursor { return &cursor{r: r} }

func (c *cursor) read(ctx context.Context, d string, buf []byte) ([]byte, error) {
	if l, ok := c.r.packs.lookup(d); ok && !l.pack.attic.Load() {
		e := l.entry()
		if c.rc == nil || c.in != l.pack || c.at != e.off {
			c.close()
			rc, err := c.r.st.Open(ctx, l.pack.path(), e.off)
			if err == nil {
				c.rc, c.in = rc, l.pack
			} else if !errors.Is(err, storage.ErrNotFound) {
				return nil, err
			}
		}
		if c.rc != nil {
			enc, err := readN(c.rc, buf, int(e.n))
			if err == nil {
				c.at = e.off + int64(e.n)
				return enc, nil
			}
			c.close()
			if !errors.Is(err, storage.ErrNotFound) {
				return nil, err
			}
		}
	}
	return c.r.ReadChunk(ctx, d, buf) // moved, condemned, or loose: look it up afresh
}

func (c *cursor) close() {
	if c.rc != nil {
		c.rc.Close()
		c.rc, c.in = nil, nil
	}
}

func readN(r io.Reader, buf []byte, n int) ([]byte, error) {
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	_, err := io.ReadFull(r, buf)
	return buf, err
}
