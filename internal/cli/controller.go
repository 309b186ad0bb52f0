package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/controller/daemon"
	"github.com/corral-build/corral/internal/etcdembed"
	"github.com/corral-build/corral/internal/events"
)

// controllerFlags are shared by `corral controller` and `corral up`.
type controllerFlags struct {
	listen, dataDir, etcdClientURL, etcdPeerURL, etcdName, registryURL, localRegistryURL, templatesFile, joinToken, defaultPermissionGroup, registryTokenSecret string
	maxWaiting, maxWaitingPerCaller, maxInstanceBytes                                                                                                           int
	etcdEndpoints                                                                                                                                               []string
	compaction, leaseTTL, schedulerTTL, retention, defragInterval, sessionTTL                                                                                   time.Duration
	standalone, enableAuth, enableAPIKeys, enableMetrics, showJoinToken                                                                                         bool
	rootToken, metricsListen                                                                                                                                    string
	logLevel                                                                                                                                                    int
	logFormat                                                                                                                                                   string
	accessLog                                                                                                                                                   bool
	tls                                                                                                                                                         serverTLSFlags
	registryTLS                                                                                                                                                 clientTLSFlags
	etcdTLS                                                                                                                                                     clientTLSFlags
	etcdTLSOn, etcdLogin                                                                                                                                        bool
	etcdUser, etcdPassword                                                                                                                                      string
	eventMaxCount                                                                                                                                               int
	eventMaxAge                                                                                                                                                 time.Duration
	eventWebhook, eventWebhookSecret                                                                                                                            string
}

func (c *controllerFlags) register(f *flags, listenDefault string) {
	f.String(&c.listen, "listen", listenDefault, "address of the REST API and dashboard", "ANKA_LISTEN_ADDR")
	f.List(&c.etcdEndpoints, "etcd-endpoints", "", "external etcd cluster, comma-separated (empty: run etcd embedded)", "ANKA_ETCD_ENDPOINTS")
	f.Bool(&c.standalone, "standalone", false, "run etcd inside this process even if endpoints are set", "ANKA_STANDALONE")
	f.String(&c.dataDir, "data-dir", "corral-data", "directory of the embedded etcd (and the local template list)", "ANKA_DATA_DIR")
	f.String(&c.etcdName, "etcd-name", "default", "embedded etcd member name")
	f.String(&c.etcdClientURL, "etcd-client-url", "http://127.0.0.1:2379", "embedded etcd client URL")
	f.String(&c.etcdPeerURL, "etcd-peer-url", "http://127.0.0.1:2380", "embedded etcd peer URL")
	f.HoursDuration(&c.compaction, "etcd-compaction", 30*time.Minute, "embedded etcd periodic history compaction retention", "ANKA_AUTO_COMPACTION_RETENTION")
	f.String(&c.registryURL, "registry-url", "", "registry URL handed to nodes, e.g. http://10.0.0.5:8089 (no trailing slash)", "ANKA_ANKA_REGISTRY")
	f.String(&c.localRegistryURL, "local-registry-url", "", "how this controller reaches the registry, when not by --registry-url (e.g. http://127.0.0.1:8089 in the same pod)", "ANKA_LOCAL_ANKA_REGISTRY")
	f.String(&c.templatesFile, "templates-file", "", "JSON template list served until a registry is configured (default DATA_DIR/templates.json)")
	f.Secret(&c.joinToken, "join-token", "token nodes present to join (default: generated once, kept in etcd)")
	f.Duration(&c.leaseTTL, "node-lease-ttl", 15*time.Second, "a node that stays silent this long goes Offline and its instances fail", "ANKA_NODE_ACTIVE_TIMEOUT")
	f.Duration(&c.schedulerTTL, "scheduler-ttl", 5*time.Second, "how long a crashed scheduler leader blocks the others")
	f.Duration(&c.retention, "instance-retention", time.Minute, "how long Terminated instances are kept", "ANKA_INSTANCE_TIME_OUT")
	f.Int(&c.logLevel, "log-level", 0, "log verbosity: 0 info, 1+ debug, -1 warnings only", "ANKA_V")
	f.String(&c.logFormat, "log-format", "text", "log lines as text (key=value) or json")
	f.Bool(&c.accessLog, "access-log", true, "log every request at info: method, route, status, bytes, duration, caller, request id (never bodies or secrets); false for very busy clouds")
	f.Bool(&c.enableAuth, "enable-auth", false, "require credentials on /api/v1 (HTTP 401 otherwise)", "ANKA_ENABLE_AUTH")
	f.Secret(&c.rootToken, "root-token", "root token: HTTP Basic with user root and this password", "ANKA_ROOT_TOKEN")
	f.Int(&c.maxWaiting, "max-waiting-instances", controller.DefaultMaxWaiting, "instances not yet running (Scheduling, Pulling) the cloud holds at most; starts past it get HTTP 429 (-1: no limit)")
	f.Int(&c.maxWaitingPerCaller, "max-waiting-instances-per-caller", 0, "instances not yet running one caller (API key, certificate, root) holds at most (0: no limit)")
	f.Int(&c.maxInstanceBytes, "max-instance-bytes", controller.DefaultMaxInstanceBytes, "bytes the cloud's unfinished instances keep in etcd at most (records, metadata, startup scripts; each script once per start); starts past it get HTTP 429 (-1: no limit)")
	f.Secret(&c.registryTokenSecret, "registry-token-secret", "secret the registry tokens this controller issues (to nodes, users, itself) are signed under: the registry's --token-secret (default: the root token)", "ANKA_REGISTRY_TOKEN_SECRET")
	c.tls.register(f, "CA whose client certificates authenticate requests (with --enable-auth)")
	c.registryTLS.register(f, "registry-", true, true)
	// External etcd with TLS and/or user login, under the reference's names.
	f.Bool(&c.etcdTLSOn, "etcd-tls", false, "connect to the external etcd over TLS (--etcd-ca-cert, --etcd-cert, --etcd-cert-key)", "ANKA_USE_ETCD_TLS")
	f.String(&c.etcdTLS.caCert, "etcd-ca-cert", "", "CA certificate of the external etcd", "ANKA_ETCD_CA_CERT")
	f.String(&c.etcdTLS.cert, "etcd-cert", "", "client certificate for the external etcd", "ANKA_ETCD_CERT")
	f.String(&c.etcdTLS.key, "etcd-cert-key", "", "its private key", "ANKA_ETCD_CERT_KEY")
	f.Bool(&c.etcdTLS.skipVerify, "etcd-skip-tls-verification", false, "do not verify the etcd server's certificate (testing only)", "ANKA_SKIP_ETCD_TLS_VERIFICATION")
	f.Bool(&c.etcdLogin, "etcd-login", false, "log in to the external etcd with --etcd-username/--etcd-password", "ANKA_USE_ETCD_LOGIN")
	f.String(&c.etcdUser, "etcd-username", "", "etcd user (with --etcd-login)", "ANKA_ETCD_USERNAME")
	f.Secret(&c.etcdPassword, "etcd-password", "etcd password (with --etcd-login)", "ANKA_ETCD_PASSWORD")
	f.Bool(&c.enableAPIKeys, "enable-api-keys", false, "allow API-key logins (/tap/v1/hand, /tap/v1/shake; keys from `corral apikey`)", "ANKA_ENABLE_API_KEYS")
	f.Bool(&c.showJoinToken, "show-join-token", false, "print the join token at start when this controller knows it (--join-token, or the start that generates it; etcd keeps only its hash)")
	f.Duration(&c.sessionTTL, "api-keys-session-ttl", time.Hour, "how long an API-key login lasts (deleting the key ends its sessions at once)", "ANKA_API_KEYS_SESSION_TTL")
	f.String(&c.defaultPermissionGroup, "default-permission-group", "", "permission group for API keys and certificates no permission group names (empty: they may do everything)")
	f.Duration(&c.defragInterval, "defrag-interval", 0, "defragment etcd this often (0 = never; it blocks writes, so it waits while instances are Scheduling or Pulling)", "ANKA_DEFRAG_DB_INTERVAL")
	f.Bool(&c.enableMetrics, "enable-metrics", false, "also serve Prometheus /metrics on --metrics-listen (it is always on the API port)", "ANKA_ENABLE_METRICS")
	f.Int(&c.eventMaxCount, "event-retention-count", events.DefaultMaxCount, "events the event log keeps at most (oldest dropped first)")
	f.Duration(&c.eventMaxAge, "event-retention", events.DefaultMaxAge, "how long the event log keeps an event")
	f.String(&c.eventWebhook, "event-webhook", "", "URL that receives every event: POST {\"events\": [...]}, in order, retried with backoff until it answers 2xx")
	f.Secret(&c.eventWebhookSecret, "event-webhook-secret", "signs each webhook body: header X-Corral-Signature: sha256=<hex HMAC-SHA256>", "CORRAL_EVENT_WEBHOOK_SECRET")
	f.String(&c.metricsListen, "metrics-listen", ":2112", "address (or port: on loopback) of the extra /metrics listener (with --enable-metrics); 0.0.0.0:2112 exposes it", "ANKA_METRICS_PORT")
}

func (c *controllerFlags) daemonConfig(log *slog.Logger) (daemon.Config, error) {
	if err := ValidateRegistryURL(c.registryURL); err != nil {
		return daemon.Config{}, fmt.Errorf("--registry-url: %w", err)
	}
	if err := ValidateRegistryURL(c.localRegistryURL); err != nil {
		return daemon.Config{}, fmt.Errorf("--local-registry-url: %w", err)
	}
	if c.enableAuth && c.rootToken == "" && !c.enableAPIKeys {
		return daemon.Config{}, fmt.Errorf("--enable-auth needs --root-token or --enable-api-keys, or nobody could log in")
	}
	serverTLS, err := c.tls.config()
	if err != nil {
		return daemon.Config{}, err
	}
	if c.eventMaxCount < 100 {
		return daemon.Config{}, fmt.Errorf("--event-retention-count: want at least 100, got %d", c.eventMaxCount)
	}
	if c.eventMaxAge < time.Minute {
		return daemon.Config{}, fmt.Errorf("--event-retention: want at least 1m, got %s", c.eventMaxAge)
	}
	if c.eventWebhook != "" {
		if u, err := url.Parse(c.eventWebhook); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return daemon.Config{}, fmt.Errorf("--event-webhook: want an http(s) URL, got %q", c.eventWebhook)
		}
	}
	if c.templatesFile == "" {
		c.templatesFile = filepath.Join(c.dataDir, "templates.json")
	}
	endpoints := c.etcdEndpoints
	if c.standalone {
		endpoints = nil
	}
	return daemon.Config{
		ListenAddr: c.listen, EtcdEndpoints: endpoints,
		Embedded: etcdembed.Config{Name: c.etcdName, DataDir: filepath.Join(c.dataDir, "etcd"),
			ClientURL: c.etcdClientURL, PeerURL: c.etcdPeerURL, AutoCompactionRetention: c.compaction},
		RegistryURL: c.registryURL, LocalRegistryURL: c.localRegistryURL, TemplatesFile: c.templatesFile, JoinToken: c.joinToken,
		NodeLeaseTTL: c.leaseTTL, SchedulerTTL: c.schedulerTTL, InstanceRetention: c.retention, Log: log,
		Auth: controller.AuthConfig{Enabled: c.enableAuth, RootToken: c.rootToken, APIKeys: c.enableAPIKeys,
			DefaultPermissionGroup: c.defaultPermissionGroup, SessionTTL: c.sessionTTL, RegistryTokenSecret: c.registryTokenSecret},
		MaxWaiting: c.maxWaiting, MaxWaitingPerCaller: c.maxWaitingPerCaller, MaxInstanceBytes: c.maxInstanceBytes,
		TLS: serverTLS, RegistryTLS: c.registryTLS.config(), DefragInterval: c.defragInterval,
		EtcdUseTLS: c.etcdTLSOn, EtcdTLS: c.etcdTLS.config(), EtcdUsername: loginField(c.etcdLogin, c.etcdUser),
		EtcdPassword:  loginField(c.etcdLogin, c.etcdPassword),
		MetricsListen: metricsListen(c.enableMetrics, c.metricsListen),
		EventMaxCount: c.eventMaxCount, EventMaxAge: c.eventMaxAge, EventWebhook: c.eventWebhook, EventWebhookSecret: c.eventWebhookSecret,
		NoAccessLog: !c.accessLog,
	}, nil
}

func runController(ctx context.Context, args []string, out io.Writer) error {
	f := newFlags("controller", "Run a controller: the /api/v1 REST API and the scheduler. State lives in etcd only.", out)
	f.warnAnka = true
	var c controllerFlags
	c.register(f, ":80")
	var log *slog.Logger
	if err := f.Parse(args, func() *slog.Logger { return newLogger(c.logLevel, c.logFormat) }); err != nil {
		return err
	}
	if err := checkLogFormat(c.logFormat); err != nil {
		return err
	}
	log = newLogger(c.logLevel, c.logFormat)
	cfg, err := c.daemonConfig(log)
	if err != nil {
		return err
	}
	d, err := daemon.Start(ctx, cfg)
	if err != nil {
		return err
	}
	defer d.Close()
	fmt.Fprintf(out, "controller: %s/api/v1\njoin token: %s\n", d.URL, shownJoinToken(d, c.showJoinToken))
	select {
	case <-ctx.Done():
		log.Info("shutting down")
		return nil
	case err := <-d.EtcdErr():
		return fmt.Errorf("embedded etcd: %w", err)
	}
}

// metricsListen is the extra /metrics address, or "" when not enabled.
func metricsListen(enabled bool, addr string) string {
	if !enabled {
		return ""
	}
	if _, err := strconv.Atoi(addr); err == nil { // a bare port (ANKA_METRICS_PORT)
		return "127.0.0.1:" + addr
	}
	if strings.HasPrefix(addr, ":") { // no host: loopback unless told otherwise
		return "127.0.0.1" + addr
	}
	return addr
}

// shownJoinToken is what start-up output says of the join token: the token
// itself only on the start that generated it or when asked, so it does not
// land in every log of every restart.
func shownJoinToken(d *daemon.Daemon, show bool) string {
	switch {
	case d.JoinToken != "" && (show || d.JoinTokenCreated):
		return d.JoinToken
	case d.JoinToken != "":
		return "set (start with --show-join-token to print it)"
	}
	return "kept hashed in etcd: `corral join-token rotate` (or POST /api/v1/join-token) makes a new one and prints it; joined nodes keep working"
}

// loginField applies an etcd credential only with --etcd-login.
func loginField(on bool, v string) string {
	if !on {
		return ""
	}
	return v
}
