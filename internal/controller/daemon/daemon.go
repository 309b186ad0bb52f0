// Package daemon wires a controller process: etcd (embedded or external), the
// store, the domain service, the scheduler and the HTTP server. `corral up`,
// `corral controller` and internal/testenv all start controllers through it.
package daemon

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/controller/httpapi"
	"github.com/corral-build/corral/internal/controller/web"
	"github.com/corral-build/corral/internal/etcdadmin"
	"github.com/corral-build/corral/internal/etcdembed"
	"github.com/corral-build/corral/internal/events"
	"github.com/corral-build/corral/internal/httpserve"
	"github.com/corral-build/corral/internal/metrics"
	"github.com/corral-build/corral/internal/scheduler"
	"github.com/corral-build/corral/internal/store"
	"github.com/corral-build/corral/internal/tlsconfig"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Config is everything a controller process needs.
type Config struct {
	ListenAddr string // ":8090"
	// EtcdEndpoints names an external cluster; empty runs an embedded member.
	EtcdEndpoints []string
	Embedded      etcdembed.Config
	EtcdPrefix    string
	// EtcdTLS and EtcdUsername/EtcdPassword authenticate to an external
	// cluster (the embedded member listens on loopback only, without them).
	EtcdUseTLS                 bool
	EtcdTLS                    tlsconfig.Client
	EtcdUsername, EtcdPassword string
	// EtcdLogLevel is the zap level of etcd's client logs ("error" default, "off" for none).
	EtcdLogLevel string

	RegistryURL string // handed to nodes; the controller uses it too unless LocalRegistryURL is set
	// LocalRegistryURL is how the controller itself reaches the registry, when
	// that differs from the address nodes use.
	LocalRegistryURL string
	TemplatesFile    string // file-backed template list, used when no registry is configured
	JoinToken        string // empty: read from etcd, or generate and store one

	NodeLeaseTTL       time.Duration
	SchedulerTTL       time.Duration
	InstanceRetention  time.Duration
	AssignmentLongPoll time.Duration
	Auth               controller.AuthConfig
	// MaxWaiting, MaxWaitingPerCaller: controller.Config's.
	MaxWaiting, MaxWaitingPerCaller int
	MaxInstanceBytes                int
	// TLS serves HTTPS (with optional client-certificate auth); RegistryTLS is
	// how the controller trusts an HTTPS registry.
	TLS         tlsconfig.Server
	RegistryTLS tlsconfig.Client
	// EtcdTimeout bounds the wait for etcd at start (15s).
	EtcdTimeout time.Duration
	// DefragInterval, when set, has the scheduler leader defragment etcd
	// this often (postponed while instances are Scheduling or Pulling).
	DefragInterval time.Duration
	// MetricsListen, when set, serves /metrics on this address too (":2112").
	MetricsListen string
	// EventMaxCount and EventMaxAge bound the event log (events defaults);
	// EventWebhook, when set, receives every event (signed with
	// EventWebhookSecret when that is set).
	EventMaxCount      int
	EventMaxAge        time.Duration
	EventWebhook       string
	EventWebhookSecret string
	// EventTemplatePoll is how often the registry is compared for template
	// events (30 s; tests make it short).
	EventTemplatePoll time.Duration
	// Timeouts bound client connections (httpserve defaults when zero).
	Timeouts httpserve.Timeouts

	Log *slog.Logger
	// NoAccessLog turns off the line logged per request (very busy
	// clouds); requests keep their X-Request-Id.
	NoAccessLog bool
}

// Daemon is a running controller.
type Daemon struct {
	URL       string
	JoinToken string
	// JoinTokenCreated: this start generated the join token (the first
	// start on this etcd); only then is it shown without being asked for.
	JoinTokenCreated bool
	Service          *controller.Service

	etcd    *etcdembed.Server
	cli     *clientv3.Client
	http    *http.Server
	metrics *http.Server // with Config.MetricsListen
	sched   *scheduler.Scheduler
	cancel  context.CancelFunc
	done    chan struct{}
	log     *slog.Logger
}

// Start brings the controller up; it serves until Close.
func Start(ctx context.Context, cfg Config) (*Daemon, error) {
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	d := &Daemon{log: log, done: make(chan struct{})}
	endpoints := cfg.EtcdEndpoints
	if len(endpoints) == 0 {
		e, err := etcdembed.Start(cfg.Embedded)
		if err != nil {
			return nil, err
		}
		d.etcd = e
		endpoints = []string{e.ClientURL}
		log.Info("embedded etcd started", "client_url", e.ClientURL, "data_dir", cfg.Embedded.DataDir)
	}
	var etcdTLS *tls.Config
	if d.etcd == nil && cfg.EtcdUseTLS { // the embedded member is plain HTTP on loopback
		var terr error
		if etcdTLS, terr = cfg.EtcdTLS.Config(); terr != nil {
			return nil, fmt.Errorf("etcd TLS: %w", terr)
		}
		if etcdTLS == nil {
			etcdTLS = &tls.Config{MinVersion: tls.VersionTLS12} // system roots
		}
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second,
		Logger: etcdClientLogger(cfg.EtcdLogLevel), TLS: etcdTLS, Username: cfg.EtcdUsername, Password: cfg.EtcdPassword})
	if err != nil {
		d.closeEtcd()
		return nil, fmt.Errorf("connect to etcd %v: %w", endpoints, err)
	}
	d.cli = cli
	var inProcess pb.LeaseClient
	if d.etcd != nil {
		var ok bool
		if inProcess, ok = d.etcd.InProcess(cli); ok {
			log.Debug("talking to the embedded etcd member in process")
		}
	}
	st := store.New(cli, cfg.EtcdPrefix)
	if inProcess != nil {
		st.RenewOver(inProcess)
	}
	// The client connects lazily: the first request tells whether etcd is
	// there, and a controller without it should say so, not hang.
	wait := cmp.Or(cfg.EtcdTimeout, 15*time.Second)
	startCtx, cancelStart := context.WithTimeout(ctx, wait)
	token, created, err := joinToken(startCtx, st, cfg.JoinToken)
	cancelStart()
	if err != nil {
		d.closeEtcd()
		if startCtx.Err() != nil && ctx.Err() == nil {
			return nil, fmt.Errorf("etcd %v is not reachable (gave up after %s)", endpoints, wait)
		}
		return nil, err
	}
	d.JoinToken, d.JoinTokenCreated = token, created

	var reg controller.Registry = controller.NewFileRegistry(cfg.TemplatesFile)
	if url := cmp.Or(cfg.LocalRegistryURL, cfg.RegistryURL); url != "" {
		regTLS, err := cfg.RegistryTLS.Config()
		if err != nil {
			d.closeEtcd()
			return nil, err
		}
		if reg, err = controller.NewRemoteRegistry(url, regTLS); err != nil {
			d.closeEtcd()
			return nil, err
		}
	}
	serverTLS, err := cfg.TLS.Config()
	if err != nil {
		d.closeEtcd()
		return nil, err
	}
	d.Service = controller.New(st, reg, controller.Config{
		RegistryURL:  cfg.RegistryURL,
		NodeLeaseTTL: cfg.NodeLeaseTTL, AssignmentPoll: cfg.AssignmentLongPoll, Auth: cfg.Auth,
		MaxWaiting: cfg.MaxWaiting, MaxWaitingPerCaller: cfg.MaxWaitingPerCaller, MaxInstanceBytes: cfg.MaxInstanceBytes,
	}, log)

	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		d.closeEtcd()
		return nil, fmt.Errorf("listen %s: %w", cfg.ListenAddr, err)
	}
	d.URL = "http://" + advertised(ln.Addr().(*net.TCPAddr))
	if serverTLS != nil {
		ln = tls.NewListener(ln, serverTLS)
		d.URL = "https://" + strings.TrimPrefix(d.URL, "http://")
	}
	m := metrics.New(st)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	// Probes (Kubernetes, compose): no credentials; ready while etcd answers.
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if _, err := d.cli.Get(ctx, "health"); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "etcd: "+err.Error()+"\n")
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.Handle("/", m.Middleware(httpapi.New(d.Service, log)))
	dash := web.New(d.Service, log)
	for _, p := range web.Routes() {
		mux.Handle(p, dash)
	}
	accessLog := log
	if cfg.NoAccessLog {
		accessLog = nil
	}
	d.http = cfg.Timeouts.Server(httpserve.AccessLog(accessLog, "controller", mux))
	httpserve.WarnIfOpen(log, "the controller", ln.Addr(), cfg.Auth.Enabled,
		"anyone who can reach it can start instances and run startup scripts on the nodes (use --enable-auth, or --listen 127.0.0.1:PORT)")

	runCtx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	d.Service.StartWatchers(runCtx)
	recorder := events.NewRecorder(st, events.Config{MaxCount: cfg.EventMaxCount, MaxAge: cfg.EventMaxAge,
		Templates: reg.ListTemplates, Template: reg.GetTemplate, TemplatePoll: cfg.EventTemplatePoll}, log)
	var webhook *events.Webhook
	if cfg.EventWebhook != "" {
		webhook = events.NewWebhook(st, cfg.EventWebhook, cfg.EventWebhookSecret, log)
	}
	sched := scheduler.New(st, scheduler.Config{
		ID: electionID(d.URL), SessionTTL: int(cfg.SchedulerTTL / time.Second), Retention: cfg.InstanceRetention,
		// A node stops its VMs when its lease may have expired; one more
		// lease TTL lets the stop finish before its work moves.
		FenceMargin: cfg.NodeLeaseTTL,
		Known:       d.Service.Catalog().Known, OnPass: m.ObservePass, OnPlaced: m.ObservePlacement,
		WhileLeading: func(ctx context.Context, fence clientv3.Cmp) {
			go recorder.Run(ctx, fence)
			if webhook != nil {
				go webhook.Run(ctx, fence)
			}
			defragLoop(ctx, d.cli, st, cfg.DefragInterval, log)
		},
	}, log)
	if d.metrics, err = metrics.Listen(cfg.MetricsListen, m.Handler()); err != nil {
		cancel()
		d.closeEtcd()
		return nil, err
	}
	if d.metrics != nil {
		log.Info("metrics listening", "addr", cfg.MetricsListen)
	}
	d.sched = sched
	go func() {
		defer close(d.done)
		_ = sched.Run(runCtx)
	}()
	go func() {
		if err := d.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("controller http server", "err", err)
		}
	}()
	log.Info("controller listening", "url", d.URL, "etcd", endpoints)
	return d, nil
}

// electionID names this controller to the others: host and URL, since
// controllers in containers all listen on the same address.
func electionID(url string) string {
	host, _ := os.Hostname()
	return host + " " + url
}

// advertised turns a wildcard listen address into a dialable one.
func advertised(a *net.TCPAddr) string {
	if a.IP.IsUnspecified() {
		return fmt.Sprintf("127.0.0.1:%d", a.Port)
	}
	return a.String()
}

// joinToken returns the configured token, or the one stored in etcd, or a new
// one stored there; all controllers on one etcd share it.
func joinToken(ctx context.Context, st *store.Store, configured string) (string, bool, error) {
	if configured != "" {
		return configured, false, st.SetJoinTokenHash(ctx, controller.SecretHash(configured))
	}
	return st.InitJoinToken(ctx, controller.NewJoinToken(), controller.SecretHash)
}

// Close shuts down gracefully: stop HTTP, resign leadership, close etcd.
func (d *Daemon) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = d.http.Shutdown(ctx)
	if d.metrics != nil {
		_ = d.metrics.Close()
	}
	d.cancel()
	<-d.done
	d.closeEtcd()
}

// Kill stops the controller the way a crash would: no resignation, so the
// other controllers take over only when its election lease expires.
func (d *Daemon) Kill() {
	d.sched.Abandon()
	d.cli.Close()
	_ = d.http.Close()
	if d.metrics != nil {
		_ = d.metrics.Close()
	}
	d.cancel()
	<-d.done
	if d.etcd != nil {
		d.etcd.Close()
	}
}

func (d *Daemon) closeEtcd() {
	if d.cli != nil {
		d.cli.Close()
	}
	if d.etcd != nil {
		d.etcd.Close()
	}
}

// EtcdErr reports a fatal embedded etcd error (nil channel when external).
func (d *Daemon) EtcdErr() <-chan error {
	if d.etcd == nil {
		return nil
	}
	return d.etcd.Err()
}

// etcdClientLogger keeps etcd's retry chatter out of the logs unless asked for.
func etcdClientLogger(level string) *zap.Logger {
	if level == "off" {
		return zap.NewNop()
	}
	lvl, err := zap.ParseAtomicLevel(level)
	if err != nil {
		lvl = zap.NewAtomicLevelAt(zap.ErrorLevel)
	}
	cfg := zap.NewProductionConfig()
	cfg.Level = lvl
	l, err := cfg.Build()
	if err != nil {
		return zap.NewNop()
	}
	return l
}

// defragLoop defragments etcd every interval (0: never). Defragmenting
// blocks writes, so a busy cloud (instances Scheduling or Pulling) postpones
// it by a minute at a time.
func defragLoop(ctx context.Context, cli *clientv3.Client, st *store.Store, interval time.Duration, log *slog.Logger) {
	if interval <= 0 {
		return
	}
	wait := interval
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		done, err := etcdadmin.Defrag(ctx, cli, st, false)
		switch {
		case errors.Is(err, etcdadmin.ErrBusy):
			log.Info("etcd defragmentation postponed", "reason", err)
			wait = min(time.Minute, interval)
			continue
		case err != nil && ctx.Err() == nil:
			log.Warn("etcd defragmentation", "err", err, "done", done)
		case err == nil:
			log.Info("etcd defragmented", "endpoints", done)
		}
		wait = interval
	}
}
