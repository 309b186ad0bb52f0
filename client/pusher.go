package client

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/directio"
	"github.com/corral-build/corral/internal/registry/chunk"
	"github.com/corral-build/corral/internal/retry"
)

// pusher runs a push's one pass: windows of chunks, each read once into a
// slot laid out as a pack frame (header, format byte, data), hashed there,
// asked about, encoded in place and sent without another copy.
type pusher struct {
	r      *Registry
	upload string
	m      *meter

	mu    sync.Mutex
	where map[string]chunkRef // digest -> the first place it was found; claimed by the window that found it

	// bases are the previous tag's chunks per file name: a changed chunk is
	// sent as a delta against the one at its index when that is smaller.
	bases  map[string][]string
	deltas atomic.Bool // the registry takes deltas
}

// slotSize holds one frame: header, format byte, the largest encoding.
const slotSize = chunk.FrameHeader + chunk.MaxEncoded

type window struct {
	file  *localFile
	first int64 // index of the first chunk
	count int64
}

func (p *pusher) run(ctx context.Context, files []localFile, workers int) error {
	var windows []window
	for i := range files {
		f := &files[i]
		n := chunk.Count(f.Size)
		f.Chunks = make([]string, n)
		for first := int64(0); first < n; first += Window {
			windows = append(windows, window{f, first, min(Window, n-first)})
		}
	}
	handles := map[string]handle{}
	for _, f := range files {
		fh, err := os.Open(f.path)
		if err != nil {
			return fmt.Errorf("push %s: %w", f.Name, err)
		}
		defer fh.Close()
		// What is not in the page cache is read around it: a cold
		// multi-GB image would fill it, and page allocation costs more
		// than the copy on many hosts.
		h := handle{file: fh, direct: directio.Open(f.path, os.O_RDONLY)}
		if h.direct != nil {
			defer h.direct.Close()
		}
		handles[f.path] = h
	}
	return parallel(ctx, len(windows), workers, func() func(context.Context, int) error {
		w := &windowWorker{p: p, slots: make([][]byte, Window)}
		return func(ctx context.Context, i int) error {
			return w.push(ctx, windows[i], handles[windows[i].file.path])
		}
	})
}

// handle is a file being pushed, opened twice: for buffered and for direct
// reads (nil where the filesystem has none).
type handle struct{ file, direct *os.File }

type windowWorker struct {
	p       *pusher
	slots   [][]byte
	scratch []byte
}

func (w *windowWorker) slot(i int) []byte {
	if w.slots[i] == nil {
		// The chunk's data, after the frame header and format byte, starts
		// at an alignment boundary: it may be read directly.
		const skip = directio.Align - chunk.FrameHeader - 1
		w.slots[i] = directio.Alloc(slotSize + skip)[skip:]
	}
	return w.slots[i]
}

// push reads, hashes, asks about and sends one window.
func (w *windowWorker) push(ctx context.Context, win window, fh handle) error {
	f := win.file
	var ask []string
	type asked struct{ slot, size int }
	askSlot := map[string]asked{}
	for i := range int(win.count) {
		idx := win.first + int64(i)
		off := idx * chunk.Size
		size := min(chunk.Size, f.Size-off)
		if inHole(fh.file, off, size) {
			w.p.m.add(size, 0, false)
			continue
		}
		data := w.slot(i)[chunk.FrameHeader+1 : chunk.FrameHeader+1+int(size)]
		if _, err := directio.ReadAt(fh.direct, fh.file, data, off); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("push %s at %d: %w", f.Name, off, err)
		}
		if chunk.IsZero(data) {
			w.p.m.add(size, 0, false)
			continue
		}
		d := chunk.Digest(data)
		f.Chunks[idx] = d
		w.p.mu.Lock()
		_, seen := w.p.where[d]
		if !seen {
			w.p.where[d] = chunkRef{f.path, off, size}
		}
		w.p.mu.Unlock()
		if seen { // another window has it (or sent it)
			w.p.m.add(size, 0, false)
			continue
		}
		ask = append(ask, d)
		askSlot[d] = asked{i, int(size)}
	}
	if len(ask) == 0 {
		return nil
	}
	missing, err := w.p.r.missing(ctx, w.p.upload, ask)
	if err != nil {
		return err
	}
	need := map[string]bool{}
	for _, d := range missing {
		need[d] = true
	}
	base := func(d string) string {
		b := w.p.bases[f.Name]
		if i := win.first + int64(askSlot[d].slot); i < int64(len(b)) && b[i] != d {
			return b[i]
		}
		return ""
	}
	sigs, err := w.p.signatures(ctx, missing, base)
	if err != nil {
		return err
	}
	var frames [][]byte
	var content int64
	for _, d := range ask {
		a := askSlot[d]
		if !need[d] {
			w.p.m.add(int64(a.size), 0, false)
			continue
		}
		b := base(d)
		frames = append(frames, w.frame(w.slot(a.slot), d, a.size, b, sigs[b]))
		content += int64(a.size)
	}
	return w.p.send(ctx, frames, content)
}

// signatures fetches the block signatures of the bases of missing chunks
// (none when the registry does not take deltas).
func (p *pusher) signatures(ctx context.Context, missing []string, base func(string) string) (map[string][]uint32, error) {
	if !p.deltas.Load() {
		return nil, nil
	}
	var want []string
	for _, d := range missing {
		if b := base(d); b != "" && !slices.Contains(want, b) {
			want = append(want, b)
		}
	}
	if len(want) == 0 {
		return nil, nil
	}
	sigs, wire, err := p.r.signatures(ctx, want)
	if errors.Is(err, errOldRegistry) {
		p.deltas.Store(false)
		return nil, nil
	}
	p.m.wire.Add(wire)
	return sigs, err
}

// frame encodes the chunk lying raw in slot in place and writes its header;
// it returns the whole frame.
func (w *windowWorker) frame(slot []byte, d string, size int, base string, sig []uint32) []byte {
	data := slot[chunk.FrameHeader+1 : chunk.FrameHeader+1+size]
	n := size + 1
	var ok bool
	if sig != nil {
		if w.scratch, ok = chunk.EncodeDelta(w.scratch, base, sig, data); ok {
			n = copy(slot[chunk.FrameHeader:], w.scratch)
		}
	}
	if ok {
	} else if w.scratch, ok = chunk.Compress(w.scratch, data); ok { // smaller: over the raw bytes
		n = copy(slot[chunk.FrameHeader:], w.scratch)
	} else {
		slot[chunk.FrameHeader] = 0 // raw, where it was read
	}
	_, _ = chunk.AppendFrameHeader(slot[:0], d, n) // d was computed here: always valid
	return slot[:chunk.FrameHeader+n]
}

// send uploads frames as one pack request (retried whole; the registry
// stores a pack only once it arrived complete).
func (p *pusher) send(ctx context.Context, frames [][]byte, content int64) error {
	if len(frames) == 0 {
		return nil
	}
	wire, resend, err := p.r.putPack(ctx, p.upload, frames)
	if err == nil && len(resend) > 0 {
		err = p.resend(ctx, resend) // deltas the registry could not rebuild
	}
	if err != nil {
		var fe *FailError
		if errors.As(err, &fe) && strings.Contains(fe.Message, "content hashes to") {
			err = fmt.Errorf("push: a file changed while pushing: %w", err)
		}
		return err
	}
	p.m.addSent(content, wire, int64(len(frames)))
	return nil
}

// resend uploads chunks the commit found missing, read again from the files.
func (p *pusher) resend(ctx context.Context, digests []string) error {
	w := &windowWorker{p: p, slots: make([][]byte, Window)}
	for len(digests) > 0 {
		n := min(Window, len(digests))
		var frames [][]byte
		var content int64
		for i, d := range digests[:n] {
			ref, ok := p.where[d]
			if !ok {
				return fmt.Errorf("commit: the registry misses chunk %s, which this push does not have", d)
			}
			slot := w.slot(i)
			if err := readChunk(ref, slot[chunk.FrameHeader+1:chunk.FrameHeader+1+int(ref.size)]); err != nil {
				return err
			}
			if chunk.Digest(slot[chunk.FrameHeader+1:chunk.FrameHeader+1+int(ref.size)]) != d {
				return fmt.Errorf("push: %s changed while pushing (chunk at offset %d)", ref.path, ref.offset)
			}
			frames = append(frames, w.frame(slot, d, int(ref.size), "", nil))
			content += ref.size
		}
		if err := p.send(ctx, frames, content); err != nil {
			return err
		}
		digests = digests[n:]
	}
	return nil
}

// putPack sends frames as one pack and returns the bytes sent.
func (r *Registry) putPack(ctx context.Context, upload string, frames [][]byte) (int64, []string, error) {
	var size int64
	for _, f := range frames {
		size += int64(len(f))
	}
	var out apiv1.PackResponse
	err := r.withRetry(ctx, fmt.Sprintf("upload %d chunks", len(frames)), func(ctx context.Context) error {
		bufs := make([]io.Reader, len(frames))
		for i, f := range frames {
			bufs[i] = bytes.NewReader(f)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.base+"/registry/corral/v1/packs?upload="+upload, io.MultiReader(bufs...))
		if err != nil {
			return err
		}
		req.ContentLength = size
		req.Header.Set("Content-Type", "application/octet-stream")
		resp, err := r.do(req)
		if err != nil {
			return err
		}
		err = decodeRegistryEnvelope(resp, &out, "POST pack")
		var fe *FailError
		if errors.As(err, &fe) && fe.HTTPStatus == http.StatusOK {
			return retry.Permanent(errOldRegistry)
		}
		return err
	})
	if errors.Is(err, errOldRegistry) {
		for _, f := range frames {
			d := hex.EncodeToString(f[:32])
			if err := r.putChunk(ctx, upload, d, f[chunk.FrameHeader:]); err != nil {
				return 0, nil, err
			}
		}
		return size, nil, nil
	}
	return size, out.Resend, err
}

// signatures asks for the block signatures of stored chunks.
func (r *Registry) signatures(ctx context.Context, digests []string) (map[string][]uint32, int64, error) {
	out := map[string][]uint32{}
	var wire int64
	err := r.withRetry(ctx, fmt.Sprintf("signatures of %d chunks", len(digests)), func(ctx context.Context) error {
		resp, err := r.postForBytes(ctx, "/registry/corral/v1/chunks/signatures", apiv1.FetchRequest{Digests: digests})
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(io.LimitReader(resp.Body, int64(len(digests))*(36+4*chunk.Blocks)+1))
		if err != nil {
			return err
		}
		wire = int64(len(data))
		for len(data) >= 36 {
			d := hex.EncodeToString(data[:32])
			n := int(binary.LittleEndian.Uint32(data[32:]))
			if n > chunk.Blocks || len(data) < 36+4*n {
				return retry.Permanent(fmt.Errorf("POST chunks/signatures: malformed answer"))
			}
			sig := make([]uint32, n)
			for i := range sig {
				sig[i] = binary.LittleEndian.Uint32(data[36+4*i:])
			}
			out[d] = sig
			data = data[36+4*n:]
		}
		return nil
	})
	return out, wire, err
}
