//go:build failpoints

package daemon

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/corral-build/corral/internal/registry"
	"github.com/corral-build/corral/internal/registry/storage"
)

// Built with -tags failpoints (crash tests only; release builds have none of
// this), the registry's store is wrapped so that the process SIGKILLs
// itself at a chosen point of its writes:
//
//	CORRAL_FAILPOINT_KILL=N   before its Nth mutating call (Put, Rename, Delete, Touch, Sync)
//	CORRAL_FAILPOINT_KILL=N~  in the middle of the Nth call if a Put (part of its body written), else before it
//	CORRAL_FAILPOINT_KILL=N+  right after the Nth call returned
//	CORRAL_FAILPOINT_SKIP=P   calls on paths with prefix P are not counted (e.g. gc/lock)
//	CORRAL_FAILPOINT_LOG=F    appends "N op path" for every counted call to F
//	CORRAL_FAILPOINT_GC_LOCK_TTL=D  the GC lock's TTL (a killed run's lock is taken over after D)
func wrapStorage(b storage.Backend) storage.Backend {
	spec := os.Getenv("CORRAL_FAILPOINT_KILL")
	logPath := os.Getenv("CORRAL_FAILPOINT_LOG")
	if spec == "" && logPath == "" {
		return b
	}
	k := &killer{Backend: b, skip: os.Getenv("CORRAL_FAILPOINT_SKIP")}
	if spec != "" {
		k.when = spec[len(spec)-1:]
		if k.when != "~" && k.when != "+" {
			k.when = ""
		}
		n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSuffix(spec, "~"), "+"))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "CORRAL_FAILPOINT_KILL=%q: want N, N~ or N+ with N >= 1\n", spec)
			os.Exit(2)
		}
		k.at = n
	}
	if logPath != "" {
		f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			fmt.Fprintf(os.Stderr, "CORRAL_FAILPOINT_LOG: %v\n", err)
			os.Exit(2)
		}
		k.log = f
	}
	return k
}

func tune(reg *registry.Registry) {
	if v := os.Getenv("CORRAL_FAILPOINT_GC_LOCK_TTL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			fmt.Fprintf(os.Stderr, "CORRAL_FAILPOINT_GC_LOCK_TTL=%q: want a positive duration\n", v)
			os.Exit(2)
		}
		reg.GCLockTTL = d
	}
}

type killer struct {
	storage.Backend
	skip string
	at   int
	when string // "" before, "~" mid-body, "+" after
	log  *os.File

	mu sync.Mutex
	n  int
}

// call counts a mutating call and says whether it is the chosen one,
// killing the process first if it is to die before it.
func (k *killer) call(op, path string) bool {
	if k.skip != "" && strings.HasPrefix(path, k.skip) {
		return false
	}
	k.mu.Lock()
	defer k.mu.Unlock() // held through a kill: no other call slips past it
	k.n++
	if k.log != nil {
		fmt.Fprintf(k.log, "%d %s %s\n", k.n, op, path)
	}
	if k.n != k.at {
		return false
	}
	if k.when == "" || (k.when == "~" && op != "Put") {
		die()
	}
	return true
}

func die() {
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way
}

// after kills the process if this was the chosen call and it dies after.
func (k *killer) after(chosen bool) {
	if chosen && k.when == "+" {
		die()
	}
}

func (k *killer) Put(ctx context.Context, path string, r io.Reader, mode storage.PutMode) error {
	chosen := k.call("Put", path)
	if chosen && k.when == "~" {
		r = &dyingReader{r: r}
	}
	err := k.Backend.Put(ctx, path, r, mode)
	k.after(chosen)
	return err
}

// dyingReader kills the process on its second read: the first has been
// handed to the backend, part of the object is written.
type dyingReader struct {
	r     io.Reader
	reads int
}

func (d *dyingReader) Read(p []byte) (int, error) {
	if d.reads++; d.reads > 1 {
		die()
	}
	return d.r.Read(p[:max(1, len(p)/2)])
}

// do runs one mutating call between its failpoints.
func (k *killer) do(op, path string, call func() error) error {
	chosen := k.call(op, path)
	err := call()
	k.after(chosen)
	return err
}

func (k *killer) Sync(ctx context.Context) error {
	return k.do("Sync", "", func() error { return k.Backend.Sync(ctx) })
}

func (k *killer) Delete(ctx context.Context, path string) error {
	return k.do("Delete", path, func() error { return k.Backend.Delete(ctx, path) })
}

func (k *killer) Rename(ctx context.Context, src, dst string) error {
	return k.do("Rename", src+" -> "+dst, func() error { return k.Backend.Rename(ctx, src, dst) })
}

func (k *killer) Touch(ctx context.Context, path string) error {
	return k.do("Touch", path, func() error { return k.Backend.Touch(ctx, path) })
}
