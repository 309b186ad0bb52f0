package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/registry/chunk"
)

// DefaultConcurrency is the number of requests in flight, each carrying up
// to Window chunks: while one window is read and hashed, others are on the
// wire or being stored.
const DefaultConcurrency = 4

// Window is how many chunks a push reads, hashes and asks about at once,
// and at most how many one pack request carries (64 MiB of data).
const Window = 64

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

	// One pass: each window of chunks is read once, hashed, asked about
	// and (what the registry lacks) sent from memory as one pack, under an
	// upload lease that protects the chunks we rely on from GC.
	upload, err := r.startUpload(ctx)
	if err != nil {
		return res, err
	}
	defer r.endUpload(context.WithoutCancel(ctx), upload.ID)
	m.begin("uploading", res.TotalBytes)
	p := &pusher{r: r, upload: upload.ID, m: m, where: map[string]chunkRef{}, bases: r.previousTag(ctx, opts.Template)}
	p.deltas.Store(len(p.bases) > 0)
	if err := p.run(ctx, files, opts.Concurrency); err != nil {
		return res, err
	}
	for _, f := range files {
		for _, d := range f.Chunks {
			if d == "" {
				res.ZeroChunks++
			}
		}
	}
	res.UniqueChunks = int64(len(p.where))

	req := apiv1.CommitRequest{UploadID: upload.ID, Template: opts.Template, Arch: opts.Arch, Tag: opts.Tag,
		Description: opts.Description, Manifest: apiv1.Manifest{ChunkSize: chunk.Size}}
	for _, f := range files {
		req.Manifest.Files = append(req.Manifest.Files, f.ManifestFile)
	}
	// Commit; if GC or a registry crash lost chunks meanwhile, send those and commit again.
	for attempt := 0; attempt < 3; attempt++ {
		if attempt == 0 && opts.BeforeCommit != nil {
			if err := opts.BeforeCommit(ctx); err != nil {
				return res, err
			}
		}
		resp, again, err := r.commit(ctx, req)
		if err != nil {
			return res, err
		}
		if len(again) == 0 {
			res.SentChunks, res.SentBytes = m.chunks.Load(), m.wire.Load()
			res.CommitResponse = resp
			m.begin("done", 0)
			return res, nil
		}
		if err := p.resend(ctx, again); err != nil {
			return res, err
		}
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

// inHole uses SEEK_DATA: if the next data starts past the chunk, it is a hole.
func inHole(f *os.File, off, size int64) bool {
	const seekData = 3
	next, err := syscall.Seek(int(f.Fd()), off, seekData)
	if errors.Is(err, syscall.ENXIO) {
		return true // no data after off
	}
	return err == nil && next >= off+size
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

// previousTag returns the chunks of each file of the template's latest tag
// (nil for a new template, or if it cannot be read: the push then sends
// changed chunks whole).
func (r *Registry) previousTag(ctx context.Context, template string) map[string][]string {
	id, err := r.FindTemplate(ctx, template)
	if err != nil {
		return nil
	}
	var tm apiv1.TagManifest
	if err := r.call(ctx, http.MethodGet, "/registry/corral/v1/manifest?purpose=delta-base&id="+url.QueryEscape(id), nil, &tm); err != nil {
		return nil
	}
	out := map[string][]string{}
	for _, f := range tm.Manifest.Files {
		out[f.Name] = f.Chunks
	}
	return out
}
