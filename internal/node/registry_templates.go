package node

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/registry/chunk"
)

// RegistryTemplates keeps pulled templates under Dir/<template id>/<tag>/.
// A pull copies every chunk it already holds in any other tag locally and
// downloads only the rest.
type RegistryTemplates struct {
	Client      *client.Registry
	Dir         string
	Concurrency int
	// MinFree is the disk space a pull must leave free; to make room, the
	// least recently used templates no instance uses are deleted (they are
	// a cache of the registry). 0: never delete.
	MinFree int64
	// InUse reports whether an instance on this node uses vmid/tag.
	InUse func(vmid, tag string) bool
	// Evicted, when set, hears of each template deleted to make room.
	Evicted func(vmid, tag string)

	mu    sync.Mutex
	locks map[string]*sync.Mutex
}

func (t *RegistryTemplates) path(vmid, tag string) string { return filepath.Join(t.Dir, vmid, tag) }

// Path is where a held template's files are (for drivers that need them).
// Asking counts as a use: eviction takes the least recently used first.
func (t *RegistryTemplates) Path(vmid, tag string) string {
	now := time.Now()
	_ = os.Chtimes(filepath.Join(t.path(vmid, tag), client.PulledManifest), now, now)
	return t.path(vmid, tag)
}

func (t *RegistryTemplates) Has(vmid, tag string) bool {
	_, err := os.Stat(filepath.Join(t.path(vmid, tag), client.PulledManifest))
	return err == nil
}

// lock serializes pulls of one template+tag (two instances may need it at once).
func (t *RegistryTemplates) lock(key string) *sync.Mutex {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.locks == nil {
		t.locks = map[string]*sync.Mutex{}
	}
	if t.locks[key] == nil {
		t.locks[key] = &sync.Mutex{}
	}
	return t.locks[key]
}

func (t *RegistryTemplates) Pull(ctx context.Context, vmid, tag, _ string, progress func(float64)) error {
	l := t.lock(vmid + "/" + tag)
	l.Lock()
	defer l.Unlock()
	if t.Has(vmid, tag) {
		return nil
	}
	if t.MinFree > 0 {
		if err := t.makeRoom(ctx, vmid, tag); err != nil {
			return err
		}
	}
	var sources []string
	held, _ := filepath.Glob(filepath.Join(t.Dir, "*", "*", client.PulledManifest))
	for _, m := range held {
		sources = append(sources, filepath.Dir(m))
	}
	_, err := t.Client.Pull(ctx, client.PullOptions{
		TemplateID: vmid, Tag: tag, Dest: t.path(vmid, tag), Concurrency: t.Concurrency, Sources: sources,
		Progress: func(p client.Progress) {
			if p.Phase == "downloading" && p.Total > 0 {
				progress(float64(p.Done) / float64(p.Total))
			}
		},
	})
	return err
}

func (t *RegistryTemplates) List() []apiv1.NodeTemplate {
	held, _ := filepath.Glob(filepath.Join(t.Dir, "*", "*", client.PulledManifest))
	out := []apiv1.NodeTemplate{}
	for _, m := range held {
		data, err := os.ReadFile(m)
		if err != nil {
			continue
		}
		var tm apiv1.TagManifest
		if json.Unmarshal(data, &tm) == nil {
			out = append(out, apiv1.NodeTemplate{UUID: tm.TemplateID, Name: tm.TemplateName, Tag: tm.Tag})
		}
	}
	return out
}

// makeRoom deletes unused templates, least recently used first, until the
// pull of vmid/tag (its non-zero chunks: files are sparse) leaves MinFree.
func (t *RegistryTemplates) makeRoom(ctx context.Context, vmid, tag string) error {
	tm, err := t.Client.Manifest(ctx, vmid, tag)
	if err != nil {
		return err
	}
	var need int64
	for _, f := range tm.Manifest.Files {
		for i, d := range f.Chunks {
			if d != "" {
				need += min(chunk.Size, f.Size-int64(i)*chunk.Size)
			}
		}
	}
	if err := os.MkdirAll(t.Dir, 0o755); err != nil {
		return err
	}
	enough := func() (bool, int64) {
		_, free := diskSpace(t.Dir)
		return free-need >= t.MinFree, free
	}
	if ok, _ := enough(); ok {
		return nil
	}
	type held struct {
		vmid, tag string
		used      time.Time
	}
	var candidates []held
	markers, _ := filepath.Glob(filepath.Join(t.Dir, "*", "*", client.PulledManifest))
	for _, m := range markers {
		dir := filepath.Dir(m)
		h := held{vmid: filepath.Base(filepath.Dir(dir)), tag: filepath.Base(dir)}
		if info, err := os.Stat(m); err == nil && (h.vmid != vmid || h.tag != tag) {
			h.used = info.ModTime()
			candidates = append(candidates, h)
		}
	}
	slices.SortFunc(candidates, func(a, b held) int { return a.used.Compare(b.used) })
	for _, c := range candidates {
		if t.InUse != nil && t.InUse(c.vmid, c.tag) {
			continue
		}
		l := t.lock(c.vmid + "/" + c.tag)
		l.Lock()
		err := os.RemoveAll(t.path(c.vmid, c.tag))
		_ = os.Remove(filepath.Join(t.Dir, c.vmid)) // if that was its last tag
		l.Unlock()
		if err != nil {
			return fmt.Errorf("evict template %s tag %s: %w", c.vmid, c.tag, err)
		}
		if t.Evicted != nil {
			t.Evicted(c.vmid, c.tag)
		}
		if ok, _ := enough(); ok {
			return nil
		}
	}
	_, free := diskSpace(t.Dir)
	return fmt.Errorf("not enough disk: the template needs %d MiB and %d MiB must stay free (--min-free-disk), but only %d MiB are free with every unused template deleted",
		need>>20, t.MinFree>>20, free>>20)
}

// DiskUsage is the space the template cache takes on disk (allocated blocks,
// so sparse disk images count what they really hold).
func (t *RegistryTemplates) DiskUsage() int64 {
	var n int64
	_ = filepath.WalkDir(t.Dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if info, err := d.Info(); err == nil {
			n += allocated(info)
		}
		return nil
	})
	return n
}

// Remove deletes a template's tag from the cache (DELETE
// /api/v1/registry/vm/remove); the caller checks no instance uses it.
func (t *RegistryTemplates) Remove(_ context.Context, vmid, tag string) error {
	l := t.lock(vmid + "/" + tag)
	l.Lock()
	defer l.Unlock()
	if err := os.RemoveAll(t.path(vmid, tag)); err != nil {
		return fmt.Errorf("remove template %s tag %s: %w", vmid, tag, err)
	}
	_ = os.Remove(filepath.Join(t.Dir, vmid)) // if that was its last tag
	return nil
}
