package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/registry/chunk"
)

// DefaultConcurrency is the number of chunks in flight. Measured with
// bench.BenchmarkPushConcurrency on a 2-core machine over loopback: 4 and 8
// are within noise of each other (1.6-1.7x of 1), 16 loses to contention;
// 4 uses the least memory and leaves headroom for latency on real links.
const DefaultConcurrency = 4

// PushOptions describe a push.
type PushOptions struct {
	Source      string // a directory of files, or one disk image
	Template    string // template name (created on first push)
	Tag         string
	Description string
	Arch        string // default: the config file's arch, else amd64
	Concurrency int
	Progress    func(Progress)
	// BeforeCommit runs once, after every chunk is uploaded and before the
	// tag is committed (saving an image drops the previous tag there).
	BeforeCommit func(context.Context) error
}

// PushResult reports what a push published and sent.
type PushResult struct {
	apiv1.CommitResponse
	TotalBytes   int64 // logical size of all files
	ZeroChunks   int64
	UniqueChunks int64
	SentChunks   int64
	SentBytes    int64 // encoded bytes on the wire
}

// localFile is one file of the tag being pushed.
type localFile struct {
	path string
	apiv1.ManifestFile
}

// Push sends a directory (or one image) as a new tag, sending only chunks the
// registry lacks. A killed push re-run sends only what is still missing.
func (r *Registry) Push(ctx context.Context, opts PushOptions) (PushResult, error) {
	var res PushResult
	if opts.Concurrency <= 0 {
		opts.Concurrency = DefaultConcurrency
	}
	files, arch, err := collectFiles(opts.Source)
	if err != nil {
		return res, err
	}
	if opts.Arch == "" {
		opts.Arch = arch
	}
	m := newMeter(opts.Progress)
	for _, f := range files {
		res.TotalBytes += f.Size
	}

	// 1. Hash every chunk (in parallel; holes are never read).
	m.begin("scanning", res.TotalBytes)
	where := map[string]chunkRef{} // digest -> one place it is found
	for i := range files {
		if err := hashFile(ctx, &files[i], opts.Concurrency, m, where); err != nil {
			return res, err
		}
		for _, d := range files[i].Chunks {
			if d == "" {
				res.ZeroChunks++
			}
		}
	}
	res.UniqueChunks = int64(len(where))

	// 2. Ask what is missing, under an upload lease that protects our chunks from GC.
	upload, err := r.startUpload(ctx)
	if err != nil {
		return res, err
	}
	defer r.endUpload(context.WithoutCancel(ctx), upload.ID)
	digests := make([]string, 0, len(where))
	for d := range where {
		digests = append(digests, d)
	}
	sort.Strings(digests)
	missing, err := r.missingAll(ctx, upload.ID, digests)
	if err != nil {
		return res, err
	}

	req := apiv1.CommitRequest{UploadID: upload.ID, Template: opts.Template, Arch: opts.Arch, Tag: opts.Tag,
		Description: opts.Description, Manifest: apiv1.Manifest{ChunkSize: chunk.Size}}
	for _, f := range files {
		req.Manifest.Files = append(req.Manifest.Files, f.ManifestFile)
	}
	// 3. Upload, commit; if GC or a crash lost chunks meanwhile, send those and commit again.
	for attempt := 0; attempt < 3; attempt++ {
		var missingBytes int64
		for _, d := range missing {
			missingBytes += where[d].size
		}
		m.begin("uploading", missingBytes)
		if err := r.uploadChunks(ctx, upload.ID, missing, where, opts.Concurrency, m); err != nil {
			return res, err
		}
		res.SentChunks += m.chunks.Load()
		res.SentBytes = m.wire.Load()
		if opts.BeforeCommit != nil && attempt == 0 {
			if err := opts.BeforeCommit(ctx); err != nil {
				return res, err
			}
		}
		resp, again, err := r.commit(ctx, req)
		if err != nil {
			return res, err
		}
		if len(again) == 0 {
			res.CommitResponse = resp
			m.begin("done", 0)
			return res, nil
		}
		missing = again
	}
	return res, fmt.Errorf("commit: chunks keep disappearing from the registry")
}

func (r *Registry) missingAll(ctx context.Context, upload string, digests []string) ([]string, error) {
	const batch = 8192
	seen := map[string]bool{}
	var out []string
	for len(digests) > 0 {
		n := min(batch, len(digests))
		var part []string
		for _, d := range digests[:n] {
			if d != "" && !seen[d] {
				seen[d] = true
				part = append(part, d)
			}
		}
		digests = digests[n:]
		if len(part) == 0 {
			continue
		}
		missing, err := r.missing(ctx, upload, part)
		if err != nil {
			return nil, err
		}
		out = append(out, missing...)
	}
	return out, nil
}

// chunkRef locates a chunk's content in a local file.
type chunkRef struct {
	path   string
	offset int64
	size   int64
}

// collectFiles lists what to push: every regular file of a directory (by
// role), or one image plus a generated config.
func collectFiles(source string) ([]localFile, string, error) {
	st, err := os.Stat(source)
	if err != nil {
		return nil, "", fmt.Errorf("push source: %w", err)
	}
	arch := apiv1.ArchAMD64
	if !st.IsDir() {
		return []localFile{{path: source, ManifestFile: apiv1.ManifestFile{Name: filepath.Base(source), Role: apiv1.RoleImage, Size: st.Size()}}}, arch, nil
	}
	entries, err := os.ReadDir(source)
	if err != nil {
		return nil, "", fmt.Errorf("push source: %w", err)
	}
	var files []localFile
	for _, e := range entries {
		if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return nil, "", err
		}
		p := filepath.Join(source, e.Name())
		role := roleOf(e.Name())
		if role == apiv1.RoleConfig {
			if a := configArch(p); a != "" {
				arch = a
			}
		}
		files = append(files, localFile{path: p, ManifestFile: apiv1.ManifestFile{Name: e.Name(), Role: role, Size: info.Size()}})
	}
	if len(files) == 0 {
		return nil, "", fmt.Errorf("push source %s: no files", source)
	}
	return files, arch, nil
}

func roleOf(name string) string {
	lower := strings.ToLower(name)
	switch {
	case strings.Contains(lower, "nvram"):
		return apiv1.RoleNVRAM
	case strings.HasSuffix(lower, ".json"), strings.HasSuffix(lower, ".yaml"), strings.HasSuffix(lower, ".yml"):
		return apiv1.RoleConfig
	case strings.Contains(lower, "state"), strings.HasSuffix(lower, ".vmss"), strings.HasSuffix(lower, ".mem"):
		return apiv1.RoleState
	}
	return apiv1.RoleImage
}

// configArch reads "arch" from a JSON config, if there is one.
func configArch(path string) string {
	data, err := os.ReadFile(path)
	if err != nil || len(data) > 1<<20 {
		return ""
	}
	var cfg struct{ Arch string }
	if json.Unmarshal(data, &cfg) != nil {
		return ""
	}
	if cfg.Arch == apiv1.ArchAMD64 || cfg.Arch == apiv1.ArchARM64 {
		return cfg.Arch
	}
	return ""
}

// hashFile fills f.Chunks using workers that read disjoint chunks.
func hashFile(ctx context.Context, f *localFile, workers int, m *meter, where map[string]chunkRef) error {
	fh, err := os.Open(f.path)
	if err != nil {
		return fmt.Errorf("push %s: %w", f.Name, err)
	}
	defer fh.Close()
	n := chunk.Count(f.Size)
	f.Chunks = make([]string, n)
	var mu sync.Mutex
	return parallel(ctx, int(n), min(workers, runtime.NumCPU()+1), func() func(context.Context, int) error {
		buf := make([]byte, chunk.Size)
		return func(_ context.Context, i int) error {
			off := int64(i) * chunk.Size
			size := min(chunk.Size, f.Size-off)
			d, err := hashChunk(fh, buf[:size], off)
			if err != nil {
				return fmt.Errorf("push %s at %d: %w", f.Name, off, err)
			}
			f.Chunks[i] = d
			mu.Lock()
			if _, ok := where[d]; d != "" && !ok {
				where[d] = chunkRef{f.path, off, size}
			}
			mu.Unlock()
			m.add(size, 0, false)
			return nil
		}
	})
}

// hashChunk returns the chunk's digest, or "" for zeros. A chunk lying in a
// hole of a sparse file is known to be zero without reading it.
func hashChunk(f *os.File, buf []byte, off int64) (string, error) {
	if inHole(f, off, int64(len(buf))) {
		return "", nil
	}
	if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	if chunk.IsZero(buf) {
		return "", nil
	}
	return chunk.Digest(buf), nil
}

// inHole uses SEEK_DATA: if the next data starts past the chunk, it is a hole.
func inHole(f *os.File, off, size int64) bool {
	const seekData = 3
	next, err := syscall.Seek(int(f.Fd()), off, seekData)
	if errors.Is(err, syscall.ENXIO) {
		return true // no data after off
	}
	return err == nil && next >= off+size
}

// uploadChunks sends chunks from their local files in parallel.
func (r *Registry) uploadChunks(ctx context.Context, upload string, digests []string, where map[string]chunkRef, workers int, m *meter) error {
	return parallel(ctx, len(digests), workers, func() func(context.Context, int) error {
		raw := make([]byte, chunk.Size)
		enc := make([]byte, 0, chunk.MaxEncoded)
		return func(ctx context.Context, i int) error {
			d := digests[i]
			ref := where[d]
			if err := readChunk(ref, raw[:ref.size]); err != nil {
				return err
			}
			enc = chunk.Encode(enc, raw[:ref.size])
			// The registry verifies every chunk against its digest, so a file
			// modified during the push fails here rather than publishing junk.
			if err := r.putChunk(ctx, upload, d, enc); err != nil {
				var fe *FailError
				if errors.As(err, &fe) && strings.Contains(fe.Message, "content hashes to") {
					err = fmt.Errorf("push: %s changed while pushing (chunk at offset %d): %w", ref.path, ref.offset, err)
				}
				return err
			}
			m.add(ref.size, int64(len(enc)), true)
			return nil
		}
	})
}

func readChunk(ref chunkRef, buf []byte) error {
	f, err := os.Open(ref.path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.ReadAt(buf, ref.offset); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read %s at %d: %w", ref.path, ref.offset, err)
	}
	return nil
}
