package registry

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/registry/storage"
)

// Chunks are stored in packs: append-only files (or S3 objects) of many
// encoded chunks, written in one sequential stream and published whole by
// the backend's atomic Put, so a crash leaves a whole pack or none.
//
//	packs/<id>.pack    encoded chunks back to back, then the index, then the trailer
//	index entry        32-byte sha256 | uint64 offset | uint32 length   (little endian)
//	trailer            uint32 entries | uint64 index offset | "CORRPK01"
//
// A pack is about PackTarget bytes (one push request's worth), so a GiB
// stored is ~16 files instead of 1,024. Every replica keeps an in-memory
// index of all packs' entries, loaded from the packs' own indexes and
// refreshed when a chunk is not found (another replica may have written it).
// GC condemns a pack to attic/packs/ when none of its chunks is live, and
// rewrites one that is mostly dead (or small) into a new pack first; a
// reader that finds its pack gone looks again, and one that needs a chunk of
// a condemned pack takes the pack back. Stores written before packs keep
// their loose chunks (chunks/<aa>/<digest>), read and collected as before.
const (
	// PackTarget is the encoded bytes at which a pack is closed.
	PackTarget    = 64 << 20
	packMagic     = "CORRPK01"
	packEntrySize = 32 + 8 + 4
	packTrailer   = 4 + 8 + len(packMagic)
	packDir       = "packs"
	packAttic     = "attic/" + packDir
)

type packEntry struct {
	sum [32]byte
	off int64
	n   uint32
}

// packFile is one pack as the index knows it.
type packFile struct {
	id      string
	attic   atomic.Bool // condemned by GC: in attic/packs/
	size    int64
	entries []packEntry
	bytes   int64 // encoded chunk bytes
}

func (p *packFile) path() string {
	if p.attic.Load() {
		return packAttic + "/" + p.id + ".pack"
	}
	return packDir + "/" + p.id + ".pack"
}

type chunkLoc struct {
	pack *packFile
	i    int
}

func (l chunkLoc) entry() packEntry { return l.pack.entries[l.i] }

// packIndex maps chunk digests to where they are stored.
type packIndex struct {
	st  storage.Backend
	log *slog.Logger

	mu     sync.RWMutex
	chunks map[[32]byte]chunkLoc
	packs  map[string]*packFile // by id
	bad    map[string]string    // ids of unreadable packs -> path

	refreshMu sync.Mutex
	refreshed time.Time // start of the last completed refresh
}

func newPackIndex(st storage.Backend, log *slog.Logger) *packIndex {
	return &packIndex{st: st, log: log, chunks: map[[32]byte]chunkLoc{}, packs: map[string]*packFile{}, bad: map[string]string{}}
}

func sumOf(d string) ([32]byte, bool) {
	var s [32]byte
	if len(d) != 64 {
		return s, false
	}
	_, err := hex.Decode(s[:], []byte(d))
	return s, err == nil
}

func (x *packIndex) lookup(d string) (chunkLoc, bool) {
	s, ok := sumOf(d)
	if !ok {
		return chunkLoc{}, false
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	l, ok := x.chunks[s]
	return l, ok
}

// add indexes a pack; its chunks take precedence over earlier copies.
func (x *packIndex) add(p *packFile) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.addLocked(p)
}

func (x *packIndex) addLocked(p *packFile) {
	x.packs[p.id] = p
	for i, e := range p.entries {
		if old, ok := x.chunks[e.sum]; ok && !old.pack.attic.Load() && p.attic.Load() {
			continue // a live copy beats a condemned one
		}
		x.chunks[e.sum] = chunkLoc{p, i}
	}
}

// refresh brings the index up to date with the store's packs, unless a
// refresh that started less than maxAge ago (or after this call began)
// already did.
func (x *packIndex) refresh(ctx context.Context, maxAge time.Duration) error {
	asked := time.Now()
	x.refreshMu.Lock()
	defer x.refreshMu.Unlock()
	if x.refreshed.After(asked) || (maxAge > 0 && time.Since(x.refreshed) < maxAge) {
		return nil
	}
	start := time.Now()
	seen := map[string]bool{} // id -> in the attic
	for _, dir := range []string{packAttic, packDir} {
		paths, err := x.st.List(ctx, dir)
		if err != nil {
			return fmt.Errorf("list %s: %w", dir, err)
		}
		for _, p := range paths {
			if id, ok := strings.CutSuffix(path.Base(p), ".pack"); ok && path.Dir(p) == dir {
				seen[id] = dir == packAttic // a pack in both places (mid-move on S3) counts as live
			}
		}
	}
	x.mu.RLock()
	var load []*packFile
	changed := false
	for id := range x.packs {
		if _, ok := seen[id]; !ok {
			changed = true
		}
	}
	for id, attic := range seen {
		p, ok := x.packs[id]
		switch {
		case x.bad[id] != "":
		case !ok:
			p = &packFile{id: id}
			p.attic.Store(attic)
			load = append(load, p)
		case p.attic.Load() != attic:
			changed = true
		}
	}
	x.mu.RUnlock()
	for _, p := range load {
		if err := x.read(ctx, p); err != nil {
			if errors.Is(err, storage.ErrNotFound) {
				delete(seen, p.id) // moved meanwhile: the next refresh finds it
				continue
			}
			if !errors.Is(err, errBadPack) {
				return err
			}
			x.log.Warn("unreadable pack left out of the index", "pack", p.path(), "err", err)
			x.mu.Lock()
			x.bad[p.id] = p.path()
			x.mu.Unlock()
			delete(seen, p.id)
		}
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if changed {
		// Packs moved or vanished: rebuild from what is there now.
		old := x.packs
		x.packs, x.chunks = map[string]*packFile{}, make(map[[32]byte]chunkLoc, len(x.chunks))
		for id, attic := range seen {
			if p, ok := old[id]; ok {
				q := &packFile{id: p.id, size: p.size, entries: p.entries, bytes: p.bytes}
				q.attic.Store(attic)
				x.addLocked(q)
			}
		}
	}
	for _, p := range load {
		if _, ok := seen[p.id]; ok {
			x.addLocked(p)
		}
	}
	x.refreshed = start
	return nil
}

var errBadPack = errors.New("not a whole pack")

// read loads a pack's index from its trailer.
func (x *packIndex) read(ctx context.Context, p *packFile) error {
	info, err := x.st.Stat(ctx, p.path())
	if err != nil {
		return err
	}
	p.size = info.Size
	if info.Size < int64(packTrailer) {
		return fmt.Errorf("%w: %d bytes", errBadPack, info.Size)
	}
	tr, err := readAt(ctx, x.st, p.path(), info.Size-int64(packTrailer), packTrailer)
	if err != nil {
		return err
	}
	count := int64(binary.LittleEndian.Uint32(tr))
	idxOff := int64(binary.LittleEndian.Uint64(tr[4:]))
	if string(tr[12:]) != packMagic || idxOff+count*packEntrySize+int64(packTrailer) != info.Size {
		return fmt.Errorf("%w: bad trailer", errBadPack)
	}
	raw, err := readAt(ctx, x.st, p.path(), idxOff, int(count*packEntrySize))
	if err != nil {
		return err
	}
	p.entries = make([]packEntry, count)
	for i := range p.entries {
		b := raw[i*packEntrySize:]
		e := &p.entries[i]
		copy(e.sum[:], b)
		e.off, e.n = int64(binary.LittleEndian.Uint64(b[32:])), binary.LittleEndian.Uint32(b[40:])
		if e.off < 0 || e.off+int64(e.n) > idxOff {
			return fmt.Errorf("%w: entry %d out of bounds", errBadPack, i)
		}
		p.bytes += int64(e.n)
	}
	return nil
}

func readAt(ctx context.Context, st storage.Backend, p string, off int64, n int) ([]byte, error) {
	rc, err := st.Open(ctx, p, off)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	buf := make([]byte, n)
	if _, err := io.ReadFull(rc, buf); err != nil {
		return nil, fmt.Errorf("read %s at %d: %w", p, off, err)
	}
	return buf, nil
}

// packWriter streams chunks into a new pack through the backend's Put.
type packWriter struct {
	x    *packIndex
	p    *packFile
	pw   *io.PipeWriter
	done chan error
	seen map[[32]byte]bool
}

func (x *packIndex) create(ctx context.Context) *packWriter {
	pr, pw := io.Pipe()
	w := &packWriter{x: x, p: &packFile{id: apiv1.NewID()}, pw: pw, done: make(chan error, 1), seen: map[[32]byte]bool{}}
	go func() {
		err := x.st.Put(ctx, w.p.path(), pr, storage.Unsynced)
		pr.CloseWithError(err) // unblock a writer if Put gave up early
		w.done <- err
	}()
	return w
}

// size is the encoded bytes written so far.
func (w *packWriter) size() int64 { return w.p.bytes }

// add writes one encoded chunk whose digest the caller has verified.
func (w *packWriter) add(digest string, encoded []byte) error {
	s, ok := sumOf(digest)
	if !ok {
		return fmt.Errorf("pack: bad digest %q", digest)
	}
	if w.seen[s] {
		return nil
	}
	if _, err := w.pw.Write(encoded); err != nil {
		return fmt.Errorf("pack %s: %w", w.p.id, err)
	}
	w.seen[s] = true
	w.p.entries = append(w.p.entries, packEntry{s, w.p.bytes, uint32(len(encoded))})
	w.p.bytes += int64(len(encoded))
	return nil
}

// close writes the index and trailer, waits for the pack to land and
// indexes it. A pack with no chunks is not written.
func (w *packWriter) close() error {
	if len(w.p.entries) == 0 {
		w.abort(errors.New("empty pack"))
		return nil
	}
	buf := make([]byte, 0, len(w.p.entries)*packEntrySize+packTrailer)
	for _, e := range w.p.entries {
		buf = append(buf, e.sum[:]...)
		buf = binary.LittleEndian.AppendUint64(buf, uint64(e.off))
		buf = binary.LittleEndian.AppendUint32(buf, e.n)
	}
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(w.p.entries)))
	buf = binary.LittleEndian.AppendUint64(buf, uint64(w.p.bytes))
	buf = append(buf, packMagic...)
	if _, err := w.pw.Write(buf); err != nil {
		w.abort(err)
		return fmt.Errorf("pack %s: %w", w.p.id, err)
	}
	w.pw.Close()
	if err := <-w.done; err != nil {
		return fmt.Errorf("pack %s: %w", w.p.id, err)
	}
	w.p.size = w.p.bytes + int64(len(buf))
	w.x.add(w.p)
	return nil
}

// abort drops the pack: the backend's Put fails, so nothing appears.
func (w *packWriter) abort(err error) {
	w.pw.CloseWithError(err)
	<-w.done
}

// setAttic records that a pack moved into or out of the attic.
func (x *packIndex) setAttic(p *packFile, attic bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	p.attic.Store(attic)
	if !attic {
		for i, e := range p.entries {
			x.chunks[e.sum] = chunkLoc{p, i}
		}
	}
}

// open reads one stored chunk's encoded bytes from offset within it.
func (x *packIndex) open(ctx context.Context, l chunkLoc, offset int64) (io.ReadCloser, error) {
	e := l.entry()
	rc, err := x.st.Open(ctx, l.pack.path(), e.off+offset)
	if err != nil {
		return nil, err
	}
	return readCloser{io.LimitReader(rc, int64(e.n)-offset), rc}, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}
