package client

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"

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
	handles := map[string]*os.File{}
	for _, f := range files {
		fh, err := os.Open(f.path)
		if err != nil {
			return fmt.Errorf("push %s: %w", f.Name, err)
		}
		defer fh.Close()
		handles[f.path] = fh
	}
	return parallel(ctx, len(windows), workers, func() func(context.Context, int) error {
		w := &windowWorker{p: p, slots: make([][]byte, Window)}
		return func(ctx context.Context, i int) error {
			return w.push(ctx, windows[i], handles[windows[i].file.path])
		}
	})
}

type windowWorker struct {
	p       *pusher
	slots   [][]byte
	scratch []byte
}

func (w *windowWorker) slot(i int) []byte {
	if w.slots[i] == nil {
		w.slots[i] = make([]byte, slotSize)
	}
	return w.slots[i]
}

// push reads, hashes, asks about and sends one window.
func (w *windowWorker) push(ctx context.Context, win window, fh *os.File) error {
	f := win.file
	var ask []string
	type asked struct{ slot, size int }
	askSlot := map[string]asked{}
	for i := range int(win.count) {
		idx := win.first + int64(i)
		off := idx * chunk.Size
		size := min(chunk.Size, f.Size-off)
		if inHole(fh, off, size) {
			w.p.m.add(size, 0, false)
			continue
		}
		data := w.slot(i)[chunk.FrameHeader+1 : chunk.FrameHeader+1+int(size)]
		if _, err := fh.ReadAt(data, off); err != nil && !errors.Is(err, io.EOF) {
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
	var frames [][]byte
	var content int64
	for _, d := range ask {
		a := askSlot[d]
		if !need[d] {
			w.p.m.add(int64(a.size), 0, false)
			continue
		}
		frames = append(frames, w.frame(w.slot(a.slot), d, a.size))
		content += int64(a.size)
	}
	return w.p.send(ctx, frames, content)
}

// frame encodes the chunk lying raw in slot in place and writes its header;
// it returns the whole frame.
func (w *windowWorker) frame(slot []byte, d string, size int) []byte {
	data := slot[chunk.FrameHeader+1 : chunk.FrameHeader+1+size]
	n := size + 1
	var ok bool
	if w.scratch, ok = chunk.Compress(w.scratch, data); ok { // smaller: over the raw bytes
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
	wire, err := p.r.putPack(ctx, p.upload, frames)
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
			frames = append(frames, w.frame(slot, d, int(ref.size)))
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
func (r *Registry) putPack(ctx context.Context, upload string, frames [][]byte) (int64, error) {
	var size int64
	for _, f := range frames {
		size += int64(len(f))
	}
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
		err = decodeRegistryEnvelope(resp, nil, "POST pack")
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
				return 0, err
			}
		}
		return size, nil
	}
	return size, err
}
