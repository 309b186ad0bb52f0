package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/registry/chunk"
)

// PulledManifest is the sidecar a completed pull leaves in its directory:
// it marks the pull complete and lets later pulls reuse its chunks locally.
const PulledManifest = ".corral-manifest.json"

// PullOptions describe a pull.
type PullOptions struct {
	TemplateID  string
	Tag         string // "" = latest
	Dest        string // directory to write the tag's files into
	Concurrency int
	// Sources are directories of earlier pulls (with a PulledManifest) whose
	// chunks are copied locally instead of downloaded.
	Sources  []string
	Progress func(Progress)
}

// PullResult reports what a pull fetched.
type PullResult struct {
	apiv1.TagManifest
	TotalBytes      int64
	ZeroChunks      int64
	LocalChunks     int64 // reused from Sources or an interrupted pull
	DownloadedChunk int64
	WireBytes       int64
}

type pullJob struct {
	file   *os.File
	name   string
	index  int64
	digest string
	size   int64
}

// Pull writes a tag's files into Dest as sparse files, verifying every chunk.
// An interrupted pull resumes: chunks already in Dest's partial files are
// kept. Dest is complete once PulledManifest exists.
func (r *Registry) Pull(ctx context.Context, opts PullOptions) (PullResult, error) {
	var res PullResult
	if opts.Concurrency <= 0 {
		opts.Concurrency = DefaultConcurrency
	}
	tm, err := r.Manifest(ctx, opts.TemplateID, opts.Tag)
	if err != nil {
		return res, err
	}
	res.TagManifest = tm
	if err := os.MkdirAll(opts.Dest, 0o755); err != nil {
		return res, fmt.Errorf("pull: %w", err)
	}
	_ = os.Remove(filepath.Join(opts.Dest, PulledManifest)) // incomplete until the end
	local := indexSources(opts.Sources)
	m := newMeter(opts.Progress)

	var jobs []pullJob
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, mf := range tm.Manifest.Files {
		if filepath.Base(mf.Name) != mf.Name || mf.Name == PulledManifest {
			return res, fmt.Errorf("pull: refusing file name %q", mf.Name)
		}
		res.TotalBytes += mf.Size
		f, err := openPartial(filepath.Join(opts.Dest, "."+mf.Name+".partial"), mf.Size)
		if err != nil {
			return res, err
		}
		files = append(files, f)
		for i, d := range mf.Chunks {
			size := min(chunk.Size, mf.Size-int64(i)*chunk.Size)
			if d == "" {
				res.ZeroChunks++
			}
			jobs = append(jobs, pullJob{f, mf.Name, int64(i), d, size})
		}
	}
	m.begin("downloading", res.TotalBytes)
	if err := r.runPull(ctx, jobs, local, opts.Concurrency, m, &res); err != nil {
		return res, err
	}
	for i, mf := range tm.Manifest.Files {
		if err := files[i].Sync(); err != nil {
			return res, fmt.Errorf("pull %s: %w", mf.Name, err)
		}
		if err := os.Rename(files[i].Name(), filepath.Join(opts.Dest, mf.Name)); err != nil {
			return res, fmt.Errorf("pull %s: %w", mf.Name, err)
		}
	}
	data, _ := json.Marshal(tm)
	if err := os.WriteFile(filepath.Join(opts.Dest, PulledManifest), data, 0o644); err != nil {
		return res, fmt.Errorf("pull: %w", err)
	}
	res.WireBytes = m.wire.Load()
	m.begin("done", 0)
	return res, nil
}

// openPartial opens (or creates) a partial file of exactly size bytes; new
// space is a hole, so zero chunks cost nothing.
func openPartial(path string, size int64) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("pull: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("pull: %w", err)
	}
	return f, nil
}

func (r *Registry) runPull(ctx context.Context, jobs []pullJob, local map[string]chunkRef, workers int, m *meter, res *PullResult) error {
	var mu sync.Mutex
	return parallel(ctx, len(jobs), workers, func() func(context.Context, int) error {
		raw := make([]byte, chunk.Size)
		enc := make([]byte, 0, chunk.MaxEncoded)
		return func(ctx context.Context, i int) error {
			j := jobs[i]
			how, wire, err := r.pullChunk(ctx, j, local, raw, &enc)
			if err != nil {
				return err
			}
			mu.Lock()
			switch how {
			case "network":
				res.DownloadedChunk++
			case "local":
				res.LocalChunks++
			}
			mu.Unlock()
			m.add(j.size, wire, how == "network")
			return nil
		}
	})
}

// pullChunk makes one chunk of the partial file right: zeros stay a hole,
// a chunk already there (resume) or in a local source is kept or copied,
// anything else is downloaded and verified.
func (r *Registry) pullChunk(ctx context.Context, j pullJob, local map[string]chunkRef, raw []byte, enc *[]byte) (string, int64, error) {
	off := j.index * chunk.Size
	buf := raw[:j.size]
	if j.digest == "" {
		if inHole(j.file, off, j.size) {
			return "zero", 0, nil
		}
		clear(buf) // a resumed file may hold old data here
		_, err := j.file.WriteAt(buf, off)
		return "zero", 0, err
	}
	if !inHole(j.file, off, j.size) {
		if _, err := j.file.ReadAt(buf, off); err == nil || errors.Is(err, io.EOF) {
			if chunk.Digest(buf) == j.digest {
				return "local", 0, nil
			}
		}
	}
	if ref, ok := local[j.digest]; ok && ref.size == j.size {
		if readChunk(ref, buf) == nil && chunk.Digest(buf) == j.digest {
			_, err := j.file.WriteAt(buf, off)
			return "local", 0, err
		}
	}
	data, err := r.getChunk(ctx, j.digest, (*enc)[:0])
	if err != nil {
		return "", 0, fmt.Errorf("pull %s chunk %d: %w", j.name, j.index, err)
	}
	*enc = data
	plain, err := chunk.Decode(buf[:0], data, j.digest)
	if err != nil {
		return "", 0, fmt.Errorf("pull %s chunk %d (%s): the registry's copy is damaged: %w", j.name, j.index, j.digest, err)
	}
	if int64(len(plain)) != j.size {
		return "", 0, fmt.Errorf("pull %s chunk %d: %d bytes, want %d", j.name, j.index, len(plain), j.size)
	}
	_, err = j.file.WriteAt(plain, off)
	return "network", int64(len(data)), err
}

// indexSources maps digests to local copies from earlier complete pulls.
func indexSources(dirs []string) map[string]chunkRef {
	index := map[string]chunkRef{}
	for _, dir := range dirs {
		data, err := os.ReadFile(filepath.Join(dir, PulledManifest))
		if err != nil {
			continue
		}
		var tm apiv1.TagManifest
		if json.Unmarshal(data, &tm) != nil {
			continue
		}
		for _, f := range tm.Manifest.Files {
			for i, d := range f.Chunks {
				if d != "" {
					off := int64(i) * chunk.Size
					index[d] = chunkRef{filepath.Join(dir, f.Name), off, min(chunk.Size, f.Size-off)}
				}
			}
		}
	}
	return index
}
