// Package testenv starts real Corral clouds for integration tests: embedded
// etcd on loopback, controllers and node agents, wired exactly as `corral up`
// wires them (internal/controller/daemon, internal/node).
package testenv

import (
	"cmp"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/controller/daemon"
	"github.com/corral-build/corral/internal/driver"
	"github.com/corral-build/corral/internal/driver/synthetic"
	"github.com/corral-build/corral/internal/etcdembed"
	"github.com/corral-build/corral/internal/node"
	regdaemon "github.com/corral-build/corral/internal/registry/daemon"
	"github.com/corral-build/corral/internal/testenv/faultproxy"
)

// Options shape a test cloud; zero values give quick defaults.
type Options struct {
	Controllers  int           // default 1
	Nodes        []NodeOptions // default none
	LeaseTTL     time.Duration // node liveness; default 2s
	SchedulerTTL time.Duration // default 2s
	Retention    time.Duration // default 1m
	// Registry runs a real registry; nodes then pull templates from it.
	Registry bool
	// RegistryProxy puts a faultproxy between the cloud (controllers and
	// nodes) and the registry: Cluster.RegistryProxy.
	RegistryProxy bool
	// RegistryAuth turns the registry's authentication on; its
	// ControllerURL is set to the cluster's first controller.
	RegistryAuth *regdaemon.Auth
	Auth         controller.AuthConfig
	// MaxWaiting, MaxWaitingPerCaller: the controllers' limits.
	MaxWaiting, MaxWaitingPerCaller int
	MaxInstanceBytes                int
	// EtcdQuota is the embedded etcd's backend quota (0: its default).
	EtcdQuota int64
	// EventMaxCount, EventWebhook, EventWebhookSecret: daemon.Config's.
	EventMaxCount                    int
	EventWebhook, EventWebhookSecret string
	// Log receives the controllers' and the registry's logs (default:
	// Logger's).
	Log *slog.Logger
}

// NodeOptions describe one synthetic node.
type NodeOptions struct {
	Name     string
	Capacity int
	Groups   []string
	PullTime time.Duration
	// Driver runs the node's instances; nil means synthetic.
	Driver driver.Driver
	// DataDir holds the node's state and template cache (default: in the
	// cluster's directory); MinFreeDisk is node.Config's.
	DataDir     string
	MinFreeDisk int64
	// ControllerURLs overrides where the node finds the controllers (a
	// faultproxy in front of them, say); default: every controller.
	ControllerURLs []string
}

// Cluster is a running test cloud.
type Cluster struct {
	t             testing.TB
	Etcd          *etcdembed.Server
	Controllers   []*daemon.Daemon
	Client        *client.Controller // talks to every controller, failing over
	TemplateID    string             // a template with tags v1 and v2
	TemplatesFile string
	Dir           string

	Registry      *regdaemon.Daemon // with Options.Registry
	RegistryProxy *faultproxy.Proxy // with Options.RegistryProxy

	mu    sync.Mutex
	nodes []*RunningNode
}

// RunningNode is an in-process node agent.
type RunningNode struct {
	Agent  *node.Agent
	cancel context.CancelFunc
	exited chan struct{} // closed when Run returned, with err set
	err    error
}

// Stop shuts the agent down gracefully (it destroys its VMs first) and
// returns what Run returned; later calls return the same.
func (n *RunningNode) Stop() error {
	n.cancel()
	<-n.exited
	return n.err
}

// Exited is closed when the agent stopped by itself or was stopped; Stop
// then returns why.
func (n *RunningNode) Exited() <-chan struct{} { return n.exited }

// Logger returns a logger that writes to the test log only when -v is set or
// CORRAL_TEST_LOG is set, keeping CI output readable.
func Logger(t testing.TB) *slog.Logger {
	if os.Getenv("CORRAL_TEST_LOG") == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// StartEtcd runs an embedded etcd member on free loopback ports.
func StartEtcd(t testing.TB) *etcdembed.Server { return StartEtcdWithQuota(t, 0) }

// StartEtcdWithQuota is StartEtcd with a backend quota of quota bytes (0:
// etcd's default).
func StartEtcdWithQuota(t testing.TB, quota int64) *etcdembed.Server {
	t.Helper()
	var e *etcdembed.Server
	var err error
	// Port 0 is resolved to a free port before etcd listens on it: another
	// process may take it in between (seen on a busy machine), so a few
	// tries, each in a fresh directory.
	for try := 0; try < 5; try++ {
		e, err = etcdembed.Start(etcdembed.Config{
			DataDir: filepath.Join(t.TempDir(), "etcd"), ClientURL: "http://127.0.0.1:0", PeerURL: "http://127.0.0.1:0",
			Quiet: os.Getenv("CORRAL_TEST_LOG") == "", QuotaBackendBytes: quota,
		})
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(e.Close)
	return e
}

// StartCluster starts etcd, the controllers and the nodes in opts.
func StartCluster(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Controllers == 0 {
		opts.Controllers = 1
	}
	c := &Cluster{t: t, Dir: t.TempDir()}
	c.Etcd = StartEtcdWithQuota(t, opts.EtcdQuota)
	c.TemplatesFile = filepath.Join(c.Dir, "templates.json")
	c.TemplateID = writeTemplates(t, c.TemplatesFile)
	var late *lateProxy
	if opts.Registry {
		cfg := regdaemon.Config{DataDir: filepath.Join(c.Dir, "registry"), Log: opts.Log}
		if opts.RegistryAuth != nil {
			late = newLateProxy(t)
			cfg.Auth = *opts.RegistryAuth
			cfg.Auth.ControllerURL = late.URL
		}
		c.Registry = startRegistry(t, cfg)
		if opts.RegistryProxy {
			c.RegistryProxy = faultproxy.New(t, c.Registry.URL)
		}
	}
	var urls []string
	for range opts.Controllers {
		d := c.StartController(opts)
		urls = append(urls, d.URL)
	}
	if late != nil {
		late.target(urls[0])
	}
	cl, err := client.New(urls, "")
	if err != nil {
		t.Fatal(err)
	}
	c.Client = cl
	if opts.Auth.RootToken != "" {
		cl.UseRootToken(opts.Auth.RootToken)
	}
	for _, n := range opts.Nodes {
		c.StartNode(n)
	}
	return c
}

// StartController adds a controller on the cluster's etcd.
func (c *Cluster) StartController(opts Options) *daemon.Daemon {
	c.t.Helper()
	registryURL := ""
	if c.Registry != nil {
		registryURL = c.Registry.URL
	}
	if c.RegistryProxy != nil {
		registryURL = c.RegistryProxy.URL
	}
	d, err := daemon.Start(context.Background(), daemon.Config{
		RegistryURL: registryURL, Auth: opts.Auth, MaxWaiting: opts.MaxWaiting, MaxWaitingPerCaller: opts.MaxWaitingPerCaller, MaxInstanceBytes: opts.MaxInstanceBytes,
		ListenAddr: "127.0.0.1:0", EtcdEndpoints: []string{c.Etcd.ClientURL},
		TemplatesFile: c.TemplatesFile, JoinToken: "test-token", EtcdLogLevel: etcdLogLevel(),
		NodeLeaseTTL: or(opts.LeaseTTL, 2*time.Second), SchedulerTTL: or(opts.SchedulerTTL, 2*time.Second),
		InstanceRetention: or(opts.Retention, time.Minute), AssignmentLongPoll: 5 * time.Second,
		EventMaxCount: opts.EventMaxCount, EventTemplatePoll: 200 * time.Millisecond, EventWebhook: opts.EventWebhook, EventWebhookSecret: opts.EventWebhookSecret,
		Log: cmp.Or(opts.Log, Logger(c.t)),
	})
	if err != nil {
		c.t.Fatalf("start controller: %v", err)
	}
	c.t.Cleanup(d.Close)
	c.Controllers = append(c.Controllers, d)
	return d
}

// URLs lists every controller's URL.
func (c *Cluster) URLs() []string {
	var urls []string
	for _, d := range c.Controllers {
		urls = append(urls, d.URL)
	}
	return urls
}

// StartNode joins a synthetic node to every controller and waits until it is listed.
func (c *Cluster) StartNode(o NodeOptions) *RunningNode {
	c.t.Helper()
	urls := o.ControllerURLs
	if urls == nil {
		urls = c.URLs()
	}
	agent, err := node.New(node.Config{
		ControllerURLs: urls, Token: "test-token", Name: o.Name, IP: "127.0.0.1",
		Capacity: o.Capacity, Groups: o.Groups, DataDir: cmp.Or(o.DataDir, filepath.Join(c.Dir, "node-"+o.Name)),
		Driver: cmp.Or[driver.Driver](o.Driver, synthetic.New(20*time.Millisecond)), SimulatedPullTime: o.PullTime,
		MinFreeDisk: o.MinFreeDisk, Log: Logger(c.t),
	})
	if err != nil {
		c.t.Fatalf("node %s: %v", o.Name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &RunningNode{Agent: agent, cancel: cancel, exited: make(chan struct{})}
	go func() { n.err = agent.Run(ctx); close(n.exited) }()
	c.t.Cleanup(func() { _ = n.Stop() })
	c.WaitNodeState(agent.ID(), apiv1.NodeActive, 10*time.Second)
	c.mu.Lock()
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()
	return n
}

// StartRegistry runs a registry daemon on a free loopback port over dir.
func StartRegistry(t testing.TB, dir string) *regdaemon.Daemon {
	t.Helper()
	return startRegistry(t, regdaemon.Config{DataDir: dir})
}

func startRegistry(t testing.TB, cfg regdaemon.Config) *regdaemon.Daemon {
	t.Helper()
	cfg.ListenAddr, cfg.Log = "127.0.0.1:0", cmp.Or(cfg.Log, Logger(t))
	r, err := regdaemon.Start(cfg)
	if err != nil {
		t.Fatalf("start registry: %v", err)
	}
	t.Cleanup(r.Close)
	return r
}

// WaitNodeState waits until the node is listed in state.
func (c *Cluster) WaitNodeState(id, state string, timeout time.Duration) apiv1.Node {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		nodes, err := c.Client.Nodes(context.Background())
		for _, n := range nodes {
			if n.NodeID == id && n.State == state {
				return n
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("node %s not %s after %s (err %v, nodes %+v)", id, state, timeout, err, nodes)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitState waits for an instance to reach state.
func (c *Cluster) WaitState(id, state string, timeout time.Duration) apiv1.Instance {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	in, err := c.Client.WaitState(ctx, id, state)
	if err != nil {
		c.t.Fatal(err)
	}
	return in
}

// writeTemplates writes a template list with one amd64 template, tags v1 and v2.
func writeTemplates(t testing.TB, path string) string {
	t.Helper()
	id := apiv1.NewID()
	version := func(tag string, n int) apiv1.TemplateVersion {
		return apiv1.TemplateVersion{Tag: tag, Number: n, Size: 1 << 30, Description: "test " + tag,
			ConfigFile: "config.json", NVRAM: "nvram", Images: []string{"disk.img"}, StateFiles: []string{}}
	}
	list := []apiv1.TemplateDetail{{
		Template: apiv1.Template{ID: id, Name: "test-template", Size: 2 << 30, Arch: runtime.GOARCH},
		Versions: []apiv1.TemplateVersion{version("v1", 1), version("v2", 2)},
	}}
	data, err := json.Marshal(list)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return id
}

func or(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

func etcdLogLevel() string {
	if os.Getenv("CORRAL_TEST_LOG") == "" {
		return "off"
	}
	return "warn"
}

// Nodes returns the cluster's running nodes in start order.
func (c *Cluster) Nodes() []*RunningNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*RunningNode(nil), c.nodes...)
}
