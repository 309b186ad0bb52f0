// Package daemon wires a registry process: storage backend, registry, HTTP
// server and the periodic garbage collector. `corral registry`, `corral up`
// and the tests start registries through it.
package daemon

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path"
	"time"

	"github.com/corral-build/corral/internal/httpserve"
	"github.com/corral-build/corral/internal/metrics"
	"github.com/corral-build/corral/internal/registry"
	"github.com/corral-build/corral/internal/registry/httpapi"
	"github.com/corral-build/corral/internal/registry/storage"
	"github.com/corral-build/corral/internal/registry/storage/filesystem"
	"github.com/corral-build/corral/internal/registry/storage/s3"
	"github.com/corral-build/corral/internal/tlsconfig"
)

// Config is everything a registry process needs.
type Config struct {
	ListenAddr string     // ":8089"
	DataDir    string     // the filesystem store's root ("/mnt/vol" in containers)
	S3         *s3.Config // when set, the store is this bucket and DataDir is unused
	GCInterval time.Duration
	GCGrace    time.Duration
	// LowSpace: when the store's free space falls below this many bytes
	// (default 5% of the volume), GC runs at once with LowSpaceGrace
	// (default 2 min) instead of GCGrace, so aborted pushes' chunks and
	// condemned data go within minutes, not hours. Checked every
	// LowSpaceCheck (default 30 s). Stores that do not report usage (S3)
	// are never low.
	LowSpace      int64
	LowSpaceGrace time.Duration
	LowSpaceCheck time.Duration
	UploadTTL     time.Duration
	TLS           tlsconfig.Server // HTTPS when set
	// Auth is who may do what (off when Auth.Enabled is false).
	Auth Auth
	// MetricsListen, when set, serves /metrics on this address too (":2112").
	MetricsListen string
	// Timeouts bound client connections (httpserve defaults when zero;
	// Read defaults to 10 min here).
	Timeouts httpserve.Timeouts
	Log      *slog.Logger
	// NoAccessLog turns off the line logged per request (very busy
	// registries); requests keep their X-Request-Id.
	NoAccessLog bool
}

// Auth is who may do what on the registry.
type Auth = httpapi.Auth

// Daemon is a running registry.
type Daemon struct {
	URL      string
	Registry *registry.Registry
	http     *http.Server
	metrics  *http.Server // with Config.MetricsListen
	cancel   context.CancelFunc
	done     chan struct{}
}

// Start serves the registry until Close.
func Start(cfg Config) (*Daemon, error) {
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	backend, where, err := openBackend(cfg)
	if err != nil {
		return nil, err
	}
	reg := registry.New(wrapStorage(backend), log)
	tune(reg)
	if cfg.GCGrace > 0 {
		reg.Grace = cfg.GCGrace
	}
	full := make(chan struct{}, 1)
	reg.OnNoSpace = func() {
		select {
		case full <- struct{}{}:
		default: // one is already asked
		}
	}
	if cfg.UploadTTL > 0 {
		reg.UploadTTL = cfg.UploadTTL
	}
	serverTLS, err := cfg.TLS.Config()
	if err != nil {
		return nil, err
	}
	m := metrics.NewRegistry(reg)
	metricsServer, err := metrics.Listen(cfg.MetricsListen, m.Handler())
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		if metricsServer != nil {
			metricsServer.Close()
		}
		return nil, fmt.Errorf("listen %s: %w", cfg.ListenAddr, err)
	}
	scheme := "http://"
	if serverTLS != nil {
		ln, scheme = tls.NewListener(ln, serverTLS), "https://"
	}
	httpserve.WarnIfOpen(log, "the registry", ln.Addr(), cfg.Auth.Enabled || (serverTLS != nil && serverTLS.ClientCAs != nil),
		"anyone who can reach it can push, overwrite and delete templates (bind it to loopback or require client certificates)")
	if cfg.Timeouts.Read == 0 {
		// Chunk PUTs and OCI PATCHes are short; a monolithic OCI upload of a
		// large blob must finish within this (use chunked uploads beyond).
		cfg.Timeouts.Read = 10 * time.Minute
	}
	addr := ln.Addr().(*net.TCPAddr)
	host := addr.IP.String()
	if addr.IP.IsUnspecified() {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &Daemon{
		URL: scheme + net.JoinHostPort(host, fmt.Sprint(addr.Port)), Registry: reg, cancel: cancel,
		http: cfg.Timeouts.Server(httpserve.AccessLog(accessLog(log, cfg.NoAccessLog), "registry", withMetrics(m, httpapi.New(reg, log, cfg.Auth)))),
		done: make(chan struct{}),
	}
	go func() {
		if err := d.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("registry http server", "err", err)
		}
	}()
	go func() {
		defer close(d.done)
		if cfg.GCInterval <= 0 {
			return
		}
		t := time.NewTicker(cfg.GCInterval)
		defer t.Stop()
		low := time.NewTicker(cmp.Or(cfg.LowSpaceCheck, 30*time.Second))
		defer low.Stop()
		lowGrace := min(reg.Grace, cmp.Or(cfg.LowSpaceGrace, 2*time.Minute))
		var fullUntil time.Time
		gc := func(grace time.Duration) {
			stats, err := reg.GCWithGrace(ctx, grace)
			if err != nil && !errors.Is(err, registry.ErrGCRunning) && ctx.Err() == nil {
				log.Warn("garbage collection", "err", err)
			}
			if err == nil {
				m.ObserveGC(stats)
			}
		}
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				gc(reg.Grace)
			case <-full:
				// A write just failed for want of space: well before
				// the 5% mark on a volume written in big pieces. Collect
				// now, and at every low-space check for the next ten
				// minutes, so what the failed push wrote (and templates
				// deleted to make room) goes once its grace is over.
				log.Warn("store full: collecting garbage now and at every low-space check for 10 minutes")
				fullUntil = time.Now().Add(10 * time.Minute)
				gc(lowGrace)
			case <-low.C:
				if time.Now().Before(fullUntil) {
					gc(lowGrace)
					continue
				}
				total, free, err := backend.Usage(ctx)
				threshold := cfg.LowSpace
				if threshold == 0 {
					threshold = total / 20
				}
				if err != nil || total == 0 || free >= threshold {
					continue
				}
				log.Warn("store low on space: collecting garbage early", "free_bytes", free, "threshold_bytes", threshold)
				gc(lowGrace)
			}
		}
	}()
	log.Info("registry listening", "url", d.URL, "store", where)
	return d, nil
}

func openBackend(cfg Config) (storage.Backend, string, error) {
	if cfg.S3 != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		b, err := s3.New(ctx, *cfg.S3)
		return b, "s3://" + path.Join(cfg.S3.Bucket, cfg.S3.Prefix), err
	}
	b, err := filesystem.New(cfg.DataDir)
	return b, cfg.DataDir, err
}

// Close stops serving; in-flight requests get a few seconds to finish.
func (d *Daemon) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = d.http.Shutdown(ctx)
	if d.metrics != nil {
		_ = d.metrics.Close()
	}
	d.cancel()
	<-d.done
}

// withMetrics serves /metrics beside the registry API and counts its requests.
func withMetrics(m *metrics.Registry, api http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	mux.Handle("/", api)
	return m.Middleware(mux)
}

// accessLog is the logger of per-request lines, nil when they are off.
func accessLog(log *slog.Logger, off bool) *slog.Logger {
	if off {
		return nil
	}
	return log
}
