package node

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
)

// RegistryTemplates keeps pulled templates under Dir/<template id>/<tag>/.
// A pull copies every chunk it already holds in any other tag locally and
// downloads only the rest.
type RegistryTemplates struct {
	Client      *client.Registry
	Dir         string
	Concurrency int

	mu    sync.Mutex
	locks map[string]*sync.Mutex
}

func (t *RegistryTemplates) path(vmid, tag string) string { return filepath.Join(t.Dir, vmid, tag) }

// Path is where a held template's files are (for drivers that need them).
func (t *RegistryTemplates) Path(vmid, tag string) string { return t.path(vmid, tag) }

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
