// Package faulty wraps a storage.Backend and injects faults at chosen calls:
// fail the Nth call of an operation, fail a random fraction of calls, or hang
// a call until its context ends. Tests run the storage conformance suite, GC,
// push and pull through it, so error paths are exercised for real.
package faulty

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/corral-build/corral/internal/registry/storage"
)

// Op names a Backend method.
type Op string

// The operations faults can be injected into.
const (
	Put    Op = "Put"
	Sync   Op = "Sync"
	Open   Op = "Open"
	Read   Op = "Read" // a Read on a reader returned by Open
	Stat   Op = "Stat"
	List   Op = "List"
	Delete Op = "Delete"
	Rename Op = "Rename"
	Touch  Op = "Touch"
)

// AllOps lists every operation.
var AllOps = []Op{Put, Sync, Open, Read, Stat, List, Delete, Rename, Touch}

// ErrInjected is the error an injected failure returns.
var ErrInjected = errors.New("faulty: injected I/O error")

type rule struct {
	op       Op
	prefix   string  // only paths with this prefix ("" = all)
	nth      int     // fail the nth matching call from now (0 = not by count)
	fraction float64 // fail this fraction of matching calls
	hang     bool    // hang until the context ends instead of failing
	seen     int
}

// Backend is a storage.Backend that injects faults. The zero rules pass
// every call through.
type Backend struct {
	inner storage.Backend
	mu    sync.Mutex
	rules []*rule
	calls map[Op]int
	fails map[Op]int
	rnd   *rand.Rand
}

// Wrap returns a fault-injecting wrapper of inner; seed drives the random
// fractions, so a failing run can be replayed.
func Wrap(inner storage.Backend, seed uint64) *Backend {
	return &Backend{inner: inner, calls: map[Op]int{}, fails: map[Op]int{}, rnd: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// FailNth makes the nth call of op from now (1 = the next) on a path under
// prefix fail with ErrInjected.
func (b *Backend) FailNth(op Op, prefix string, n int) { b.add(&rule{op: op, prefix: prefix, nth: n}) }

// HangNth makes the nth call of op from now hang until its context ends.
func (b *Backend) HangNth(op Op, prefix string, n int) {
	b.add(&rule{op: op, prefix: prefix, nth: n, hang: true})
}

// FailFraction makes a random fraction of op's calls under prefix fail.
func (b *Backend) FailFraction(op Op, prefix string, f float64) {
	b.add(&rule{op: op, prefix: prefix, fraction: f})
}

// HangAll makes every call of op under prefix hang until its context ends.
func (b *Backend) HangAll(op Op, prefix string) {
	b.add(&rule{op: op, prefix: prefix, fraction: 1, hang: true})
}

// Reset removes every rule.
func (b *Backend) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rules = nil
}

// Calls reports how many calls of op were made.
func (b *Backend) Calls(op Op) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.calls[op]
}

// Injected reports how many faults were injected into op.
func (b *Backend) Injected(op Op) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.fails[op]
}

func (b *Backend) add(r *rule) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rules = append(b.rules, r)
}

// fault decides whether this call fails; a hanging call waits for ctx.
func (b *Backend) fault(ctx context.Context, op Op, path string) error {
	b.mu.Lock()
	b.calls[op]++
	var hit *rule
	for i, r := range b.rules {
		if r.op != op || !strings.HasPrefix(path, r.prefix) {
			continue
		}
		if r.nth > 0 {
			r.seen++
			if r.seen == r.nth {
				hit = r
				b.rules = append(b.rules[:i:i], b.rules[i+1:]...)
				break
			}
			continue
		}
		if b.rnd.Float64() < r.fraction {
			hit = r
			break
		}
	}
	if hit != nil {
		b.fails[op]++
	}
	b.mu.Unlock()
	if hit == nil {
		return nil
	}
	if hit.hang {
		<-ctx.Done()
		return fmt.Errorf("faulty: %s %s hung: %w", op, path, ctx.Err())
	}
	return fmt.Errorf("faulty: %s %s: %w", op, path, ErrInjected)
}

func (b *Backend) Put(ctx context.Context, path string, r io.Reader, mode storage.PutMode) error {
	if err := b.fault(ctx, Put, path); err != nil {
		return err
	}
	return b.inner.Put(ctx, path, r, mode)
}

func (b *Backend) Sync(ctx context.Context) error {
	if err := b.fault(ctx, Sync, ""); err != nil {
		return err
	}
	return b.inner.Sync(ctx)
}

func (b *Backend) Open(ctx context.Context, path string, offset int64) (io.ReadCloser, error) {
	if err := b.fault(ctx, Open, path); err != nil {
		return nil, err
	}
	rc, err := b.inner.Open(ctx, path, offset)
	if err != nil {
		return nil, err
	}
	return &reader{ReadCloser: rc, b: b, ctx: ctx, path: path}, nil
}

type reader struct {
	io.ReadCloser
	b    *Backend
	ctx  context.Context
	path string
}

func (r *reader) Read(p []byte) (int, error) {
	if err := r.b.fault(r.ctx, Read, r.path); err != nil {
		return 0, err
	}
	return r.ReadCloser.Read(p)
}

func (b *Backend) Stat(ctx context.Context, path string) (storage.Info, error) {
	if err := b.fault(ctx, Stat, path); err != nil {
		return storage.Info{}, err
	}
	return b.inner.Stat(ctx, path)
}

func (b *Backend) List(ctx context.Context, prefix string) ([]string, error) {
	if err := b.fault(ctx, List, prefix); err != nil {
		return nil, err
	}
	return b.inner.List(ctx, prefix)
}

func (b *Backend) Delete(ctx context.Context, path string) error {
	if err := b.fault(ctx, Delete, path); err != nil {
		return err
	}
	return b.inner.Delete(ctx, path)
}

func (b *Backend) Rename(ctx context.Context, src, dst string) error {
	if err := b.fault(ctx, Rename, src); err != nil {
		return err
	}
	return b.inner.Rename(ctx, src, dst)
}

func (b *Backend) Touch(ctx context.Context, path string) error {
	if err := b.fault(ctx, Touch, path); err != nil {
		return err
	}
	return b.inner.Touch(ctx, path)
}

func (b *Backend) PurgeIncomplete(ctx context.Context, age time.Duration) (int, error) {
	return b.inner.PurgeIncomplete(ctx, age)
}

func (b *Backend) Usage(ctx context.Context) (int64, int64, error) { return b.inner.Usage(ctx) }
