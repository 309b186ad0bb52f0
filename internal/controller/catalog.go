package controller

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/scheduler"
)

// Catalog is the scheduler's cached view of which template tags the
// registry holds. Lookups never block: a template not seen yet is
// Unconfirmed while a background fetch asks the registry; known ones are
// refreshed in the background and keep their last answer while the
// registry is unreachable or hangs, so a sick registry cannot stall
// placements of templates already known.
type Catalog struct {
	reg Registry
	log *slog.Logger
	// Refresh is how old an answer may get before a lookup refreshes it in
	// the background; a miss (tag absent) refreshes after MissRefresh, so a
	// fresh push is seen quickly.
	Refresh, MissRefresh time.Duration
	// Timeout bounds one background fetch; AskTimeout bounds a start
	// request's own lookup when a last answer exists to fall back on.
	Timeout, AskTimeout time.Duration

	mu      sync.Mutex
	entries map[string]*catalogEntry
}

type catalogEntry struct {
	detail   apiv1.TemplateDetail
	tags     map[string]bool
	absent   bool      // the registry said it has no such template
	answered bool      // a fetch has completed
	at       time.Time // when the last fetch completed
	fetching bool
}

// NewCatalog serves lookups for reg.
func NewCatalog(reg Registry, log *slog.Logger) *Catalog {
	return &Catalog{reg: reg, log: log, Refresh: 30 * time.Second, MissRefresh: 2 * time.Second,
		Timeout: 15 * time.Second, AskTimeout: 3 * time.Second, entries: map[string]*catalogEntry{}}
}

// Known is a scheduler.TemplateKnown.
func (c *Catalog) Known(vmid, tag string) scheduler.Verdict {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[vmid]
	if e == nil {
		e = &catalogEntry{}
		c.entries[vmid] = e
	}
	now := time.Now()
	var v scheduler.Verdict
	switch {
	case !e.answered:
		v = scheduler.Unconfirmed
	case !e.absent && e.tags[tag]:
		v = scheduler.Known
	default:
		v = scheduler.Absent
	}
	stale := now.Sub(e.at) > c.Refresh || v != scheduler.Known && now.Sub(e.at) > c.MissRefresh
	if !e.fetching && (!e.answered || stale) {
		e.fetching = true
		go c.fetch(vmid)
	}
	return v
}

// fetch asks the registry for one template; on an error other than "not
// in registry" the previous answer stays.
func (c *Catalog) fetch(vmid string) {
	ctx, cancel := context.WithTimeout(context.Background(), c.Timeout)
	defer cancel()
	t, err := c.reg.GetTemplate(ctx, vmid)
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[vmid]
	e.fetching = false
	c.record(e, vmid, t, err)
}

// record applies a registry answer to an entry (c.mu held).
func (c *Catalog) record(e *catalogEntry, vmid string, t apiv1.TemplateDetail, err error) {
	switch {
	case errors.Is(err, ErrNotInRegistry):
		e.tags, e.absent = nil, true
	case err != nil:
		c.log.Warn("registry catalog refresh failed; keeping the last answer", "vmid", vmid, "err", err)
		if !e.answered {
			return // still Unconfirmed; the next lookup tries again
		}
		e.at = time.Now() // retry after Refresh/MissRefresh, not at once
		return
	default:
		e.detail, e.tags, e.absent = t, map[string]bool{}, false
		for _, v := range t.Versions {
			e.tags[v.Tag] = true
		}
	}
	e.answered, e.at = true, time.Now()
}

// Template asks the registry for a template's detail. When the registry
// fails (other than "not in registry") or does not answer within the
// catalog's AskTimeout, the last answer it gave is used, so starting instances
// of known templates survives a registry outage.
func (c *Catalog) Template(ctx context.Context, vmid string) (apiv1.TemplateDetail, error) {
	c.mu.Lock()
	e := c.entries[vmid]
	var cached *apiv1.TemplateDetail
	if e != nil && e.answered && !e.absent {
		d := e.detail
		cached = &d
	}
	c.mu.Unlock()
	askCtx := ctx
	if cached != nil {
		var cancel context.CancelFunc
		askCtx, cancel = context.WithTimeout(ctx, c.AskTimeout)
		defer cancel()
	}
	t, err := c.reg.GetTemplate(askCtx, vmid)
	if err != nil && !errors.Is(err, ErrNotInRegistry) && cached != nil && ctx.Err() == nil {
		c.log.Warn("registry unavailable; using the template as last seen", "vmid", vmid, "err", err)
		return *cached, nil
	}
	c.mu.Lock()
	if e := c.entries[vmid]; e != nil && !e.fetching {
		c.record(e, vmid, t, err)
	} else if e == nil && err == nil {
		e = &catalogEntry{}
		c.entries[vmid] = e
		c.record(e, vmid, t, err)
	}
	c.mu.Unlock()
	return t, err
}

// Forget drops a template from the cache (it was deleted through this
// controller), so the next lookup asks again.
func (c *Catalog) Forget(vmid string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[vmid]; e != nil && !e.fetching {
		delete(c.entries, vmid)
	}
}
