package controller

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"

	apiv1 "github.com/corral-build/corral/api/v1"
)

// Registry is the controller's view of the template registry: a real plug
// point, served by a file-backed list today and by the registry service later.
type Registry interface {
	Ping(ctx context.Context) error
	ListTemplates(ctx context.Context) ([]apiv1.Template, error)
	// GetTemplate returns ErrNotInRegistry for an unknown id.
	GetTemplate(ctx context.Context, id string) (apiv1.TemplateDetail, error)
	// DeleteTemplate deletes one tag, or the whole template when tag is "".
	DeleteTemplate(ctx context.Context, id, tag string) error
	// Revert drops the latest tag.
	Revert(ctx context.Context, id string) error
	// RevertTo drops every tag after tag (or number, when >= 0).
	RevertTo(ctx context.Context, id, tag string, number int) error
	Disk(ctx context.Context) (apiv1.Disk, error)
}

// FileRegistry is a small JSON file listing templates: a stand-in registry
// for a controller without one.
type FileRegistry struct {
	path string
	mu   sync.Mutex
}

// NewFileRegistry reads templates from path (a JSON array of TemplateDetail).
func NewFileRegistry(path string) *FileRegistry { return &FileRegistry{path: path} }

func (f *FileRegistry) load() ([]apiv1.TemplateDetail, error) {
	data, err := os.ReadFile(f.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read template list: %w", err)
	}
	var list []apiv1.TemplateDetail
	if err := json.Unmarshal(data, &list); err != nil {
		return nil, fmt.Errorf("parse template list %s: %w", f.path, err)
	}
	return list, nil
}

// save writes atomically: temp file, fsync, rename.
func (f *FileRegistry) save(list []apiv1.TemplateDetail) error {
	data, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(f.path), 0o755); err != nil {
		return fmt.Errorf("save template list: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(f.path), ".templates-*")
	if err != nil {
		return fmt.Errorf("save template list: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("save template list: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save template list: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save template list: %w", err)
	}
	return os.Rename(tmp.Name(), f.path)
}

func (f *FileRegistry) Ping(context.Context) error { _, err := f.load(); return err }

func (f *FileRegistry) ListTemplates(context.Context) ([]apiv1.Template, error) {
	list, err := f.load()
	out := make([]apiv1.Template, 0, len(list))
	for _, t := range list {
		out = append(out, t.Template)
	}
	return out, err
}

func (f *FileRegistry) GetTemplate(_ context.Context, id string) (apiv1.TemplateDetail, error) {
	list, err := f.load()
	if err != nil {
		return apiv1.TemplateDetail{}, err
	}
	for _, t := range list {
		if t.ID == id {
			return t, nil
		}
	}
	return apiv1.TemplateDetail{}, ErrNotInRegistry
}

func (f *FileRegistry) edit(id string, fn func(*apiv1.TemplateDetail) (keep bool, err error)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	list, err := f.load()
	if err != nil {
		return err
	}
	for i := range list {
		if list[i].ID != id {
			continue
		}
		keep, err := fn(&list[i])
		if err != nil {
			return err
		}
		if !keep {
			list = append(list[:i], list[i+1:]...)
		}
		return f.save(list)
	}
	return ErrNotInRegistry
}

func (f *FileRegistry) DeleteTemplate(_ context.Context, id, tag string) error {
	return f.edit(id, func(t *apiv1.TemplateDetail) (bool, error) {
		if tag == "" {
			return false, nil
		}
		for i, v := range t.Versions {
			if v.Tag == tag {
				t.Versions = append(t.Versions[:i], t.Versions[i+1:]...)
				return true, nil
			}
		}
		return true, &NoSuchTagError{tag}
	})
}

func (f *FileRegistry) Revert(_ context.Context, id string) error {
	return f.edit(id, func(t *apiv1.TemplateDetail) (bool, error) {
		latest, ok := t.Latest()
		if !ok {
			return true, fmt.Errorf("template %s has no tags", id)
		}
		for i, v := range t.Versions {
			if v.Number == latest.Number {
				t.Versions = append(t.Versions[:i], t.Versions[i+1:]...)
				break
			}
		}
		return true, nil
	})
}

func (f *FileRegistry) RevertTo(ctx context.Context, id, tag string, number int) error {
	if tag == "" && number < 0 {
		return f.Revert(ctx, id)
	}
	return f.edit(id, func(t *apiv1.TemplateDetail) (bool, error) {
		at := slices.IndexFunc(t.Versions, func(v apiv1.TemplateVersion) bool {
			return tag != "" && v.Tag == tag || tag == "" && v.Number == number
		})
		if at < 0 {
			return true, &NoSuchTagError{cmp.Or(tag, strconv.Itoa(number))}
		}
		t.Versions = t.Versions[:at+1]
		return true, nil
	})
}

func (f *FileRegistry) Disk(context.Context) (apiv1.Disk, error) {
	return diskUsage(filepath.Dir(f.path))
}
