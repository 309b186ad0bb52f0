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
	// Timeout bounds one registry request; AskTimeout bounds a start
	// request's own lookup when a last answer exists to fall back on.
	Timeout, AskTimeout time.Duration

	mu      sync.Mutex
	entries map[string]*catalogEntry
	asks    map[string]*asking
}

// asking is a template's registry requests, for starts and for the
// background refreshes of lookups. A start needs an answer the registry
// gave after the start arrived (a tag pushed just before it must be
// there), so one that arrives while a request is out waits for the next,
// which goes out when that one ends and answers every start that arrived
// meanwhile: one request out per template at a time, and a burst of starts
// costs a few requests, not one each. Every answer is recorded.
type asking struct {
	out, next *ask
}

type ask struct {
	done chan struct{} // closed once t and err are set
	t    apiv1.TemplateDetail
	err  error
}

type catalogEntry struct {
	detail   apiv1.TemplateDetail
	tags     map[string]bool
	absent   bool      // the registry said it has no such template
	answered bool      // a request has completed
	at       time.Time // when the last request completed
}

// NewCatalog serves lookups for reg.
func NewCatalog(reg Registry, log *slog.Logger) *Catalog {
	return &Catalog{reg: reg, log: log, Refresh: 30 * time.Second, MissRefresh: 2 * time.Second,
		Timeout: 15 * time.Second, AskTimeout: 3 * time.Second, entries: map[string]*catalogEntry{}, asks: map[string]*asking{}}
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
	if c.asks[vmid] == nil && (!e.answered || stale) {
		c.ask(vmid) // in the background: its answer is recorded
	}
	return v
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

// Template asks the registry for a template's detail, sharing the request
// with the starts that arrived while the one before it was out (asking).
// When the registry fails (other than "not in registry") or does not answer
// within the catalog's AskTimeout, the last answer it gave is used, so
// starting instances of known templates survives a registry outage.
func (c *Catalog) Template(ctx context.Context, vmid string) (apiv1.TemplateDetail, error) {
	c.mu.Lock()
	e := c.entries[vmid]
	var cached *apiv1.TemplateDetail
	if e != nil && e.answered && !e.absent {
		d := e.detail
		cached = &d
	}
	a := c.ask(vmid)
	c.mu.Unlock()
	var giveUp <-chan time.Time
	if cached != nil {
		t := time.NewTimer(c.AskTimeout)
		defer t.Stop()
		giveUp = t.C
	}
	select {
	case <-a.done:
		if a.err != nil && !errors.Is(a.err, ErrNotInRegistry) && cached != nil {
			c.log.Warn("registry unavailable; using the template as last seen", "vmid", vmid, "err", a.err)
			return *cached, nil
		}
		return a.t, a.err
	case <-giveUp:
		c.log.Warn("registry did not answer in time; using the template as last seen", "vmid", vmid, "wait", c.AskTimeout)
		return *cached, nil
	case <-ctx.Done():
		return apiv1.TemplateDetail{}, ctx.Err()
	}
}

// ask is the registry request a caller arriving now waits on (c.mu held):
// sent at once when none is out, else the next one.
func (c *Catalog) ask(vmid string) *ask {
	as := c.asks[vmid]
	if as == nil {
		as = &asking{}
		c.asks[vmid] = as
	}
	switch {
	case as.out == nil:
		as.out = &ask{done: make(chan struct{})}
		go c.send(vmid, as.out)
		return as.out
	case as.next == nil:
		as.next = &ask{done: make(chan struct{})}
	}
	return as.next
}

// send asks the registry for the callers waiting on a, records the answer,
// then sends the next request if callers arrived meanwhile.
func (c *Catalog) send(vmid string, a *ask) {
	ctx, cancel := context.WithTimeout(context.Background(), c.Timeout)
	t, err := c.reg.GetTemplate(ctx, vmid)
	cancel()
	c.mu.Lock()
	a.t, a.err = t, err
	if e := c.entries[vmid]; e != nil {
		c.record(e, vmid, t, err)
	} else if err == nil {
		e = &catalogEntry{}
		c.entries[vmid] = e
		c.record(e, vmid, t, err)
	}
	as := c.asks[vmid]
	as.out, as.next = as.next, nil
	if as.out != nil {
		go c.send(vmid, as.out)
	} else {
		delete(c.asks, vmid)
	}
	c.mu.Unlock()
	close(a.done)
}

// Forget drops a template from the cache (it was deleted through this
// controller), so the next lookup asks again.
func (c *Catalog) Forget(vmid string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.entries, vmid) // a request out records its answer anew, or none on an error
}
