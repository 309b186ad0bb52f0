package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/corral-build/corral/internal/registry/daemon"
	"github.com/corral-build/corral/internal/registry/storage/s3"
)

// registryFlags are shared by `corral registry` and `corral up`.
type registryFlags struct {
	prefix                                        string // "registry-" in `corral up`
	listen, dataDir, backend                      string
	s3                                            s3.Config
	gcInterval, gcGrace, uploadTTL, lowSpaceGrace time.Duration
	lowSpace                                      string
	logLevel                                      int
	logFormat                                     string
	accessLog                                     bool
	tls                                           serverTLSFlags
	s3TLS                                         clientTLSFlags // how the registry trusts an HTTPS S3 endpoint
	enableMetrics                                 bool
	metricsListen                                 string
	auth                                          daemon.Auth
	apiKeys                                       bool
}

func (r *registryFlags) register(f *flags, prefix, listenDefault, dirDefault string) {
	r.prefix = prefix
	f.String(&r.listen, prefix+"listen", listenDefault, "registry REST API address", aliasIf(prefix == "", "ANKA_LISTEN_ADDR")...)
	f.String(&r.dataDir, prefix+"data-dir", dirDefault, "registry store root (/mnt/vol in containers)", aliasIf(prefix == "", "ANKA_BASE_PATH")...)
	f.String(&r.backend, prefix+"backend", "disk", "storage backend: disk (the --data-dir volume) or s3 (a bucket; credentials from the standard AWS_* variables, shared config or instance role)", aliasIf(prefix == "", "ANKA_BACKEND_TYPE")...)
	f.String(&r.s3.Bucket, prefix+"s3-bucket", "", "S3 bucket (--backend s3); it must exist", aliasIf(prefix == "", "ANKA_BACKEND_S3_BUCKET")...)
	f.String(&r.s3.Prefix, prefix+"s3-prefix", "", "key prefix inside the bucket, so several registries or tools can share one")
	f.String(&r.s3.Endpoint, prefix+"s3-endpoint", "", "S3-compatible server URL (MinIO, versitygw, Ceph...); empty = AWS (or AWS_ENDPOINT_URL_S3)")
	f.String(&r.s3.Region, prefix+"s3-region", "", "bucket region (default AWS_REGION, else us-east-1)")
	f.Bool(&r.s3.PathStyle, prefix+"s3-path-style", false, "address the bucket in the URL path, not the host name (always on with --s3-endpoint)", aliasIf(prefix == "", "ANKA_BACKEND_S3_USE_PATH_STYLE")...)
	f.Duration(&r.gcInterval, prefix+"gc-interval", time.Hour, "how often garbage collection frees unreferenced chunks (0 = never)")
	f.Duration(&r.gcGrace, prefix+"gc-grace", time.Hour, "chunks written or used more recently than this are never collected")
	f.Duration(&r.uploadTTL, prefix+"upload-ttl", 24*time.Hour, "idle upload leases older than this are purged")
	f.String(&r.lowSpace, prefix+"gc-low-space", "", "free space under which GC runs at once with --gc-low-space-grace, e.g. 20G (default: 5% of the volume)")
	f.Duration(&r.lowSpaceGrace, prefix+"gc-low-space-grace", 2*time.Minute, "the grace period of those early collections")
	if prefix == "" { // `corral up` has its own --log-level, no TLS and metrics on the API ports
		f.Int(&r.logLevel, "log-level", 0, "log verbosity: 0 info, 1+ debug", "ANKA_V")
		f.String(&r.logFormat, "log-format", "text", "log lines as text (key=value) or json")
		f.Bool(&r.accessLog, "access-log", true, "log every request at info: method, route, status, bytes, duration, caller, request id (never bodies or secrets); false for very busy registries")
		r.tls.register(f, "CA whose client certificates may use the registry: with it, every request needs one")
		r.tls.requireClientCert = true
		r.s3TLS.register(f, "s3-", false, true)
		f.Bool(&r.auth.Enabled, "enable-auth", false, "require credentials: the root token, a client certificate (--ca-cert), or a registry token from the controller (HTTP 401 otherwise)", "ANKA_ENABLE_AUTH")
		f.Secret(&r.auth.RootToken, "root-token", "root token: HTTP Basic with user root and this password; every action", "ANKA_ROOT_TOKEN")
		f.Secret(&r.auth.TokenSecret, "token-secret", "secret registry tokens are signed under: the controller's --registry-token-secret (default: the root token)", "ANKA_REGISTRY_TOKEN_SECRET")
		f.Bool(&r.auth.AnonymousPull, "anonymous-pull", false, "with --enable-auth, let callers without credentials pull (never push or delete)")
		f.String(&r.auth.ControllerURL, "controller-url", "", "controller that vouches for credentials the registry cannot check itself (API-key sessions, node credentials)", "ANKA_CONTROLLER_ADDRESS")
		f.Bool(&r.apiKeys, "enable-api-keys", false, "accept API-key sessions (checked by --controller-url)", "ANKA_ENABLE_API_KEYS")
		f.Bool(&r.enableMetrics, "enable-metrics", false, "also serve Prometheus /metrics on --metrics-listen (it is always on the API port)", "ANKA_ENABLE_METRICS")
		f.String(&r.metricsListen, "metrics-listen", ":2112", "address (or port: on loopback) of the extra /metrics listener (with --enable-metrics); 0.0.0.0:2112 exposes it", "ANKA_METRICS_PORT")
		// The reference registry's multipart tuning: accepted so existing
		// registry.env files keep working; Corral writes ~1 MiB objects in one PUT.
		var ignored string
		f.String(&ignored, "s3-upload-part-size", "", "ignored (accepted for compatibility: objects are single PUTs of about 1 MiB)", "ANKA_BACKEND_S3_UPLOAD_PART_SIZE")
		f.String(&ignored, "s3-upload-concurrency", "", "ignored (accepted for compatibility: push/pull concurrency is the client's --concurrency)", "ANKA_BACKEND_S3_UPLOAD_CONCURRENCY")
	}
}

func aliasIf(cond bool, names ...string) []string {
	if cond {
		return names
	}
	return nil
}

func (r *registryFlags) config(log *slog.Logger) (daemon.Config, error) {
	cfg := daemon.Config{ListenAddr: r.listen, DataDir: r.dataDir, GCInterval: r.gcInterval,
		GCGrace: r.gcGrace, UploadTTL: r.uploadTTL, Log: log, MetricsListen: metricsListen(r.enableMetrics, r.metricsListen),
		LowSpaceGrace: r.lowSpaceGrace, NoAccessLog: !r.accessLog}
	if r.lowSpace != "" {
		n, err := parseSize(r.lowSpace)
		if err != nil {
			return daemon.Config{}, fmt.Errorf("--%sgc-low-space: %w", r.prefix, err)
		}
		cfg.LowSpace = n
	}
	switch r.backend {
	case "disk", "filesystem":
	case "s3":
		if r.s3.Bucket == "" {
			return daemon.Config{}, fmt.Errorf("--%sbackend s3 needs --%[1]ss3-bucket (%s)", r.prefix, EnvName(r.prefix+"s3-bucket"))
		}
		s3cfg := r.s3
		s3cfg.PathStyle = s3cfg.PathStyle || s3cfg.Endpoint != ""
		s3TLS, err := r.s3TLS.config().Config()
		if err != nil {
			return daemon.Config{}, fmt.Errorf("S3 TLS: %w", err)
		}
		if s3TLS != nil {
			s3cfg.HTTPClient = &http.Client{Transport: &http.Transport{TLSClientConfig: s3TLS, Proxy: http.ProxyFromEnvironment}}
		}
		cfg.S3 = &s3cfg
	default:
		return daemon.Config{}, fmt.Errorf("--%sbackend %q: want disk or s3", r.prefix, r.backend)
	}
	if r.auth.Enabled {
		r.tls.requireClientCert = false // a certificate is one credential among others
		if r.auth.RootToken == "" && r.auth.ControllerURL == "" && r.tls.clientCA == "" {
			return daemon.Config{}, fmt.Errorf("--enable-auth needs --root-token, --controller-url or --ca-cert, or nobody could log in")
		}
		if r.auth.RootToken == "" && r.auth.TokenSecret == "" && r.auth.ControllerURL != "" {
			return daemon.Config{}, fmt.Errorf("--controller-url needs --token-secret or --root-token: the secret the controller signs registry tokens under")
		}
		if r.auth.ControllerURL != "" {
			if err := ValidateRegistryURL(r.auth.ControllerURL); err != nil {
				return daemon.Config{}, fmt.Errorf("--controller-url: %w", err)
			}
		}
	}
	if r.apiKeys && r.auth.ControllerURL == "" {
		return daemon.Config{}, fmt.Errorf("--enable-api-keys needs --controller-url: API keys live in the controller's etcd")
	}
	cfg.Auth = r.auth
	var err error
	cfg.TLS, err = r.tls.config()
	return cfg, err
}

func runRegistry(ctx context.Context, args []string, out io.Writer) error {
	f := newFlags("registry", "Run the template registry (standalone: it needs no controller or etcd).", out)
	f.warnAnka = true
	var r registryFlags
	r.register(f, "", ":8089", "corral-registry")
	if err := f.Parse(args, func() *slog.Logger { return newLogger(r.logLevel, r.logFormat) }); err != nil {
		return err
	}
	if err := checkLogFormat(r.logFormat); err != nil {
		return err
	}
	log := newLogger(r.logLevel, r.logFormat)
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
