package node

import (
	"context"
	"slices"
	"sync"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
)

// Templates is the node's local template cache.
type Templates interface {
	Has(vmid, tag string) bool
	// Pull fetches a template+tag, calling progress with 0..1.
	Pull(ctx context.Context, vmid, tag, name string, progress func(float64)) error
	List() []apiv1.NodeTemplate
}

// SimulatedTemplates pretends to pull in a fixed time; it stands in for the
// registry's chunk cache on synthetic nodes.
type SimulatedTemplates struct {
	PullTime time.Duration
	mu       sync.Mutex
	held     []apiv1.NodeTemplate
}

func (s *SimulatedTemplates) Has(vmid, tag string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.ContainsFunc(s.held, func(t apiv1.NodeTemplate) bool { return t.UUID == vmid && t.Tag == tag })
}

func (s *SimulatedTemplates) Pull(ctx context.Context, vmid, tag, name string, progress func(float64)) error {
	const steps = 4
	for i := 1; i <= steps; i++ {
		select {
		case <-time.After(s.PullTime / steps):
		case <-ctx.Done():
			return ctx.Err()
		}
		progress(float64(i) / steps)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.held = append(s.held, apiv1.NodeTemplate{UUID: vmid, Name: name, Tag: tag})
	return nil
}

func (s *SimulatedTemplates) List() []apiv1.NodeTemplate {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.held)
}

// Remove forgets a template's tag.
func (s *SimulatedTemplates) Remove(_ context.Context, vmid, tag string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.held = slices.DeleteFunc(s.held, func(t apiv1.NodeTemplate) bool { return t.UUID == vmid && t.Tag == tag })
	return nil
}

// remover is a template cache that can delete a template on request.
type remover interface {
	Remove(ctx context.Context, vmid, tag string) error
}
