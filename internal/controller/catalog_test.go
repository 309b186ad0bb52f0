package controller

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
)

// gatedRegistry is a file registry whose template reads are counted and,
// while gate is set, held until it is closed.
type gatedRegistry struct {
	*FileRegistry
	reads   atomic.Int64
	mu      sync.Mutex
	gate    chan struct{}
	arrived chan struct{} // a read reached the gate
}

func (g *gatedRegistry) GetTemplate(ctx context.Context, id string) (apiv1.TemplateDetail, error) {
	g.reads.Add(1)
	d, err := g.FileRegistry.GetTemplate(ctx, id)
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate != nil {
		select {
		case g.arrived <- struct{}{}:
		default:
		}
		<-gate
	}
	return d, err
}

// waitingCtx counts the calls of Done: a caller about to wait on it.
type waitingCtx struct {
	context.Context
	n *atomic.Int64
}

func (w waitingCtx) Done() <-chan struct{} { w.n.Add(1); return w.Context.Done() }

func writeTemplateTags(t *testing.T, path, id string, tags ...string) {
	t.Helper()
	d := apiv1.TemplateDetail{Template: apiv1.Template{ID: id, Name: "tmpl"}}
	for i, tag := range tags {
		d.Versions = append(d.Versions, apiv1.TemplateVersion{Tag: tag, Number: i})
	}
	data, _ := json.Marshal([]apiv1.TemplateDetail{d})
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestStartsShareRegistryAsks: starts that arrive while the registry is
// being asked share the next request (a burst of 50 costs 2 reads, where
// each start read on its own), and that request goes out after they
// arrived, so a tag pushed just before a start is seen by it.
func TestStartsShareRegistryAsks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "templates.json")
	id := apiv1.NewID()
	writeTemplateTags(t, path, id, "v1")
	reg := &gatedRegistry{FileRegistry: NewFileRegistry(path), gate: make(chan struct{}), arrived: make(chan struct{}, 1)}
	c := NewCatalog(reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The first start's read is held; v2 is pushed; 50 more starts come.
	first := make(chan apiv1.TemplateDetail, 1)
	go func() { d, _ := c.Template(ctx, id); first <- d }()
	<-reg.arrived
	writeTemplateTags(t, path, id, "v1", "v2")
	var wg sync.WaitGroup
	answers := make(chan apiv1.TemplateDetail, 50)
	var waiting atomic.Int64
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := c.Template(waitingCtx{ctx, &waiting}, id)
			if err != nil {
				t.Error(err)
			}
			answers <- d
		}()
	}
	// Every start is waiting (the first on the registry, the rest on the
	// next request) before the first read is let go.
	for deadline := time.Now().Add(10 * time.Second); waiting.Load() < 50 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	reg.mu.Lock()
	close(reg.gate)
	reg.gate = nil
	reg.mu.Unlock()
	wg.Wait()
	close(answers)
	if d := <-first; len(d.Versions) != 1 {
		t.Fatalf("the first start saw %d tags, want 1 (it asked before the push)", len(d.Versions))
	}
	for d := range answers {
		if len(d.Versions) != 2 {
			t.Fatalf("a start that arrived after the push saw %d tags, want 2", len(d.Versions))
		}
	}
	if n := reg.reads.Load(); n != 2 {
		t.Fatalf("51 starts made %d registry reads, want 2", n)
	}
}
