// Package etcdembed runs an etcd member inside the Corral process, so a single
// machine needs no separate etcd. It is the only package that imports the etcd
// server; everything else talks to etcd through clientv3.
package etcdembed

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3rpc"
	"go.etcd.io/etcd/server/v3/proxy/grpcproxy/adapter"
	"go.uber.org/zap"
)

// Config selects where the member keeps its data and listens.
type Config struct {
	Name    string // member name; "default" when empty
	DataDir string
	// ClientURL and PeerURL are advertised as http://host:port; port 0 picks
	// a free loopback port.
	ClientURL string
	PeerURL   string
	// ListenClientURL and ListenPeerURL, when set, are where the member
	// listens (e.g. http://0.0.0.0:2379 in a container advertising its name).
	ListenClientURL string
	ListenPeerURL   string
	// InitialClusterState is "new" (default) or "existing" (joining a cluster).
	InitialClusterState string
	// InitialCluster lists every member as name=peerURL for multi-member clusters;
	// empty means a single-member cluster.
	InitialCluster string
	// AutoCompactionRetention is the history kept by periodic compaction (30m default).
	AutoCompactionRetention time.Duration
	QuotaBackendBytes       int64
	LogLevel                string // etcd's zap level: "error" unless debugging
	Quiet                   bool   // discard etcd's own logs (tests)
}

// Server is a running embedded member.
type Server struct {
	etcd      *embed.Etcd
	ClientURL string
	closeOnce sync.Once
}

// Start launches the member and waits until it serves clients.
func Start(cfg Config) (*Server, error) {
	if cfg.Name == "" {
		cfg.Name = "default"
	}
	if cfg.AutoCompactionRetention == 0 {
		cfg.AutoCompactionRetention = 30 * time.Minute
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "error"
	}
	clientURL, err := resolvePort(orDefault(cfg.ClientURL, "http://127.0.0.1:2379"))
	if err != nil {
		return nil, fmt.Errorf("etcd client url: %w", err)
	}
	peerURL, err := resolvePort(orDefault(cfg.PeerURL, "http://127.0.0.1:2380"))
	if err != nil {
		return nil, fmt.Errorf("etcd peer url: %w", err)
	}

	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.DataDir
	ec.ListenClientUrls = []url.URL{*clientURL}
	ec.AdvertiseClientUrls = []url.URL{*clientURL}
	ec.ListenPeerUrls = []url.URL{*peerURL}
	ec.AdvertisePeerUrls = []url.URL{*peerURL}
	if cfg.ListenClientURL != "" {
		if ec.ListenClientUrls, err = parseURLs(cfg.ListenClientURL); err != nil {
			return nil, fmt.Errorf("etcd listen client url: %w", err)
		}
	}
	if cfg.ListenPeerURL != "" {
		if ec.ListenPeerUrls, err = parseURLs(cfg.ListenPeerURL); err != nil {
			return nil, fmt.Errorf("etcd listen peer url: %w", err)
		}
	}
	if cfg.InitialClusterState != "" {
		ec.ClusterState = cfg.InitialClusterState
	}
	ec.InitialCluster = cfg.InitialCluster
	if ec.InitialCluster == "" {
		ec.InitialCluster = cfg.Name + "=" + peerURL.String()
	}
	ec.AutoCompactionMode = "periodic"
	ec.AutoCompactionRetention = cfg.AutoCompactionRetention.String()
	if cfg.QuotaBackendBytes > 0 {
		ec.QuotaBackendBytes = cfg.QuotaBackendBytes
	}
	ec.LogLevel = cfg.LogLevel
	ec.Logger = "zap"
	if cfg.Quiet {
		ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	}
	// Metrics are served by Corral's own /metrics, which includes etcd's registry.
	ec.Metrics = "basic"

	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd in %s: %w", cfg.DataDir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s: not ready after 60s", cfg.DataDir)
	}
	return &Server{etcd: e, ClientURL: clientURL.String()}, nil
}

// Close stops the member gracefully; calling it again does nothing (etcd's
// own Close panics on a second call).
func (s *Server) Close() { s.closeOnce.Do(s.etcd.Close) }

// InProcess points cli's key-value, watch and lease calls at this member
// by direct function calls (etcd's own adapters, which its v3client and
// grpc-proxy use) instead of gRPC over a loopback socket: no transport and
// no protobuf encoding between a controller and its own member (in the
// fleet-scale burst they were about a sixth of the controller's CPU).
// Cluster, maintenance and auth calls, and the endpoints the etcd care and
// metrics ask per member, stay on the network. It returns the lease client
// for streams of its own (the store's renewals).
//
// Only for a member that is the whole cluster, which is checked: the
// calls skip gRPC's interceptors, so a watch asking for a leader is not
// ended when the member loses it, and a lone member is always its own
// leader. A member of several keeps the network (false).
func (s *Server) InProcess(cli *clientv3.Client) (pb.LeaseClient, bool) {
	if len(s.etcd.Server.Cluster().Members()) != 1 {
		return nil, false
	}
	srv := s.etcd.Server
	cli.KV = clientv3.NewKVFromKVClient(adapter.KvServerToKvClient(v3rpc.NewQuotaKVServer(srv)), cli)
	cli.Watcher = &blankWatcher{clientv3.NewWatchFromWatchClient(adapter.WatchServerToWatchClient(v3rpc.NewWatchServer(srv)), cli)}
	lc := adapter.LeaseServerToLeaseClient(v3rpc.NewQuotaLeaseServer(srv))
	cli.Lease = clientv3.NewLeaseFromLeaseClient(lc, cli, time.Second)
	return lc, true
}

// blankWatcher hides the caller's context values from the in-process watch
// server, which would format them (as etcd's v3client does: their String
// races with whoever sets them).
type blankWatcher struct{ clientv3.Watcher }

func (w *blankWatcher) Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	return w.Watcher.Watch(blankContext{ctx}, key, opts...)
}

type blankContext struct{ context.Context }

func (blankContext) String() string { return "(blankCtx)" }

// Err reports a fatal server error after start.
func (s *Server) Err() <-chan error { return s.etcd.Err() }

func parseURLs(raw string) ([]url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	return []url.URL{*u}, nil
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// resolvePort parses u and replaces port 0 with a free port, because etcd must
// advertise the exact URL its peers and clients will dial.
func resolvePort(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	if u.Port() != "0" {
		return u, nil
	}
	l, err := net.Listen("tcp", net.JoinHostPort(u.Hostname(), "0"))
	if err != nil {
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	u.Host = net.JoinHostPort(u.Hostname(), strconv.Itoa(port))
	return u, nil
}
