package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/corral-build/corral/internal/registry/daemon"
)

// registryFlags are shared by `corral registry` and `corral up`.
type registryFlags struct {
	listen, dataDir, backend       string
	gcInterval, gcGrace, uploadTTL time.Duration
	logLevel                       int
	tls                            serverTLSFlags
}

func (r *registryFlags) register(f *flags, prefix, listenDefault, dirDefault string) {
	f.String(&r.listen, prefix+"listen", listenDefault, "registry REST API address", aliasIf(prefix == "", "ANKA_LISTEN_ADDR")...)
	f.String(&r.dataDir, prefix+"data-dir", dirDefault, "registry store root (/mnt/vol in containers)", aliasIf(prefix == "", "ANKA_BASE_PATH")...)
	f.String(&r.backend, prefix+"backend", "disk", "storage backend: disk", aliasIf(prefix == "", "ANKA_BACKEND_TYPE")...)
	f.Duration(&r.gcInterval, prefix+"gc-interval", time.Hour, "how often garbage collection frees unreferenced chunks (0 = never)")
	f.Duration(&r.gcGrace, prefix+"gc-grace", time.Hour, "chunks written or used more recently than this are never collected")
	f.Duration(&r.uploadTTL, prefix+"upload-ttl", 24*time.Hour, "idle upload leases older than this are purged")
	if prefix == "" { // `corral up` has its own --log-level and no TLS
		f.Int(&r.logLevel, "log-level", 0, "log verbosity: 0 info, 1+ debug", "ANKA_V")
		r.tls.register(f, false)
	}
}

func aliasIf(cond bool, names ...string) []string {
	if cond {
		return names
	}
	return nil
}

func (r *registryFlags) config(log *slog.Logger) (daemon.Config, error) {
	if r.backend != "disk" && r.backend != "filesystem" {
		return daemon.Config{}, fmt.Errorf("--backend %q: only the disk backend is in this build (S3 is planned)", r.backend)
	}
	serverTLS, err := r.tls.config()
	if err != nil {
		return daemon.Config{}, err
	}
	return daemon.Config{ListenAddr: r.listen, DataDir: r.dataDir, GCInterval: r.gcInterval,
		GCGrace: r.gcGrace, UploadTTL: r.uploadTTL, TLS: serverTLS, Log: log}, nil
}

func runRegistry(ctx context.Context, args []string, out io.Writer) error {
	f := newFlags("registry", "Run the template registry (standalone: it needs no controller or etcd).", out)
	var r registryFlags
	r.register(f, "", ":8089", "corral-registry")
	if err := f.Parse(args, func() *slog.Logger { return newLogger(r.logLevel) }); err != nil {
		return err
	}
	log := newLogger(r.logLevel)
	cfg, err := r.config(log)
	if err != nil {
		return err
	}
	d, err := daemon.Start(cfg)
	if err != nil {
		return err
	}
	defer d.Close()
	fmt.Fprintf(out, "registry: %s/registry/status\n", d.URL)
	<-ctx.Done()
	log.Info("shutting down")
	return nil
}
