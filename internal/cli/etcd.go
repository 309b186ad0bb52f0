package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/corral-build/corral/internal/etcdadmin"
	"github.com/corral-build/corral/internal/etcdembed"
	"github.com/corral-build/corral/internal/store"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

const etcdUsage = `Usage: corral etcd <command> [flags] (each has --help)

  serve                              run an etcd member (for compose and Kubernetes)
  snapshot save FILE                 save a consistent snapshot while etcd runs
  snapshot restore FILE --data-dir D  seed a new data directory (a new host) from a snapshot
  status                             DB size, in-use size, revision, leader, compaction
  defrag [--force]                   defragment (refused while instances are Scheduling/Pulling)
  check perf [--duration 60s]        writes/s, slowest request, stddev: PASS or FAIL`

// runEtcd dispatches `corral etcd ...`.
func runEtcd(ctx context.Context, args []string, out io.Writer) error {
	switch {
	case len(args) >= 1 && args[0] == "serve":
		return etcdServe(ctx, args[1:], out)
	case len(args) >= 2 && args[0] == "snapshot" && args[1] == "save":
		return etcdSnapshotSave(ctx, args[2:], out)
	case len(args) >= 2 && args[0] == "snapshot" && args[1] == "restore":
		return etcdSnapshotRestore(args[2:], out)
	case len(args) >= 1 && args[0] == "status":
		return etcdStatus(ctx, args[1:], out)
	case len(args) >= 1 && args[0] == "defrag":
		return etcdDefrag(ctx, args[1:], out)
	case len(args) >= 2 && args[0] == "check" && args[1] == "perf":
		return etcdCheckPerf(ctx, args[2:], out)
	}
	fmt.Fprintln(out, etcdUsage)
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
		return flag.ErrHelp
	}
	return errors.New("want an etcd command (see above)")
}

// etcdFlags parses flags with positional arguments anywhere and connects.
func etcdFlags(name, summary string, out io.Writer, args []string, define func(*flags)) (*flags, []string, []string, error) {
	f := newFlags("etcd "+name, summary, out)
	var endpoints []string
	f.List(&endpoints, "etcd-endpoints", "http://127.0.0.1:2379", "etcd endpoints, comma-separated", "ANKA_ETCD_ENDPOINTS")
	if define != nil {
		define(f)
	}
	var positional []string
	for len(args) > 0 {
		if err := f.fs.Parse(args); err != nil {
			return nil, nil, nil, err
		}
		if args = f.fs.Args(); len(args) > 0 {
			positional, args = append(positional, args[0]), args[1:]
		}
	}
	if err := f.Parse(nil, slog.Default); err != nil {
		return nil, nil, nil, err
	}
	return f, positional, endpoints, nil
}

// etcdClient parses a command's flags like etcdFlags and connects to etcd;
// the caller closes the client.
func etcdClient(name, summary string, out io.Writer, args []string, define func(*flags)) (*clientv3.Client, []string, error) {
	_, pos, endpoints, err := etcdFlags(name, summary, out, args, define)
	if err != nil {
		return nil, nil, err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, nil, fmt.Errorf("connect to etcd %v: %w", endpoints, err)
	}
	// The client connects lazily; probe once so an unreachable etcd is an
	// error now rather than a hang later.
	probe, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Get(probe, "/corral/config/join-token", clientv3.WithKeysOnly()); err != nil {
		cli.Close()
		return nil, nil, fmt.Errorf("etcd %v is not reachable: %w", endpoints, err)
	}
	return cli, pos, nil
}

func etcdSnapshotSave(ctx context.Context, args []string, out io.Writer) error {
	_, pos, endpoints, err := etcdFlags("snapshot save", "Save a consistent snapshot to FILE while etcd keeps serving.\nUsage: corral etcd snapshot save FILE", out, args, nil)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: corral etcd snapshot save FILE")
	}
	if err := etcdadmin.SnapshotSave(ctx, endpoints[0], pos[0]); err != nil {
		return err
	}
	fmt.Fprintf(out, "snapshot of %s saved to %s\n", endpoints[0], pos[0])
	return nil
}

func etcdSnapshotRestore(args []string, out io.Writer) error {
	var cfg etcdadmin.RestoreConfig
	_, pos, _, err := etcdFlags("snapshot restore", "Create a new etcd data directory from a snapshot (a new single-member cluster).\nUsage: corral etcd snapshot restore FILE --data-dir DIR", out, args, func(f *flags) {
		f.String(&cfg.DataDir, "data-dir", "", "new etcd data directory (must not exist); for `corral controller --data-dir X` use X/etcd")
		f.String(&cfg.Name, "etcd-name", "default", "member name")
		f.String(&cfg.PeerURL, "etcd-peer-url", "http://127.0.0.1:2380", "the new member's peer URL")
	})
	if err != nil {
		return err
	}
	if len(pos) != 1 || cfg.DataDir == "" {
		return errors.New("usage: corral etcd snapshot restore FILE --data-dir DIR")
	}
	cfg.Snapshot = pos[0]
	if err := etcdadmin.SnapshotRestore(cfg); err != nil {
		return err
	}
	fmt.Fprintf(out, "restored %s into %s (member %s, peer %s)\n", cfg.Snapshot, cfg.DataDir, cfg.Name, cfg.PeerURL)
	return nil
}

func etcdStatus(ctx context.Context, args []string, out io.Writer) error {
	cli, _, err := etcdClient("status", "Show each member's DB size, in-use size, revision and leader.", out, args, nil)
	if err != nil {
		return err
	}
	defer cli.Close()
	sts, err := etcdadmin.GetStatus(ctx, cli)
	if err != nil {
		return err
	}
	for _, s := range sts {
		if s.Err != "" {
			fmt.Fprintf(out, "%s: unreachable within %s: %s\n", s.Endpoint, etcdadmin.StatusTimeout, s.Err)
			continue
		}
		fmt.Fprintf(out, "%s: version %s, db %s (in use %s), revision %d, member %x, leader %x%s, raft term %d\n",
			s.Endpoint, s.Version, bytesHuman(s.DBSize), bytesHuman(s.DBSizeInUse), s.Revision, s.MemberID, s.Leader,
			map[bool]string{true: " (this member)"}[s.IsLeader], s.RaftTerm)
	}
	fmt.Fprintln(out, "compaction: embedded etcd compacts history periodically, keeping 30m by default (--etcd-compaction);"+
		" an external cluster uses its own --auto-compaction-mode/--auto-compaction-retention")
	return nil
}

func etcdDefrag(ctx context.Context, args []string, out io.Writer) error {
	var force bool
	cli, _, err := etcdClient("defrag", "Defragment every member, one at a time. It blocks writes while it runs.", out, args, func(f *flags) {
		f.Bool(&force, "force", false, "run even while instances are Scheduling or Pulling")
	})
	if err != nil {
		return err
	}
	defer cli.Close()
	done, err := etcdadmin.Defrag(ctx, cli, store.New(cli, ""), force)
	for _, ep := range done {
		fmt.Fprintf(out, "defragmented %s\n", ep)
	}
	return err
}

func etcdCheckPerf(ctx context.Context, args []string, out io.Writer) error {
	var d time.Duration
	cli, _, err := etcdClient("check perf", "Offer 150 writes/s from 50 clients (etcdctl's small load) and judge the result.", out, args, func(f *flags) {
		f.Duration(&d, "duration", time.Minute, "how long to write")
	})
	if err != nil {
		return err
	}
	defer cli.Close()
	lim := etcdadmin.DefaultPerfLimits
	res, err := etcdadmin.CheckPerf(ctx, cli, d, lim)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%d writes in %s: %.0f writes/s (limit >= %.0f), slowest %s (limit %s), stddev %s (limit %s)\n",
		res.Writes, res.Duration.Round(time.Millisecond), res.WritesPerS, 0.9*lim.TargetRate,
		res.Slowest.Round(time.Microsecond), lim.MaxSlowest, res.Stddev.Round(time.Microsecond), lim.MaxStddev)
	if len(res.Failures) > 0 {
		for _, f := range res.Failures {
			fmt.Fprintln(out, "FAIL:", f)
		}
		return errors.New("etcd check perf: FAIL")
	}
	fmt.Fprintln(out, "PASS")
	return nil
}

// etcdServeFlags are the flags of `corral etcd serve` (also read by the test
// that checks deploy/ env files).
type etcdServeFlags struct {
	cfg      etcdembed.Config
	logLevel int
}

func (e *etcdServeFlags) register(f *flags) {
	f.String(&e.cfg.Name, "etcd-name", "default", "member name (unique in the cluster)")
	f.String(&e.cfg.DataDir, "data-dir", "corral-etcd", "member data directory")
	f.String(&e.cfg.ClientURL, "etcd-advertise-client-url", "http://127.0.0.1:2379", "client URL other members and clients use")
	f.String(&e.cfg.PeerURL, "etcd-advertise-peer-url", "http://127.0.0.1:2380", "peer URL other members use")
	f.String(&e.cfg.ListenClientURL, "etcd-listen-client-url", "", "where to listen for clients (default: the advertised URL)")
	f.String(&e.cfg.ListenPeerURL, "etcd-listen-peer-url", "", "where to listen for peers (default: the advertised URL)")
	f.String(&e.cfg.InitialCluster, "etcd-initial-cluster", "", "name=peerURL,... of every member (empty: a single member)")
	f.String(&e.cfg.InitialClusterState, "etcd-initial-cluster-state", "new", "new, or existing to join a running cluster")
	f.Duration(&e.cfg.AutoCompactionRetention, "etcd-compaction", 30*time.Minute, "periodic history compaction retention")
	f.Int(&e.logLevel, "log-level", 0, "log verbosity: 0 info, 1+ debug", "ANKA_V")
}

func etcdServe(ctx context.Context, args []string, out io.Writer) error {
	var e etcdServeFlags
	f := newFlags("etcd serve", "Run an etcd member in this process (the etcd service of compose and Kubernetes deployments).", out)
	e.register(f)
	if err := f.Parse(args, func() *slog.Logger { return newLogger(e.logLevel, "text") }); err != nil {
		return err
	}
	if e.logLevel >= 1 {
		e.cfg.LogLevel = "info"
	}
	srv, err := etcdembed.Start(e.cfg)
	if err != nil {
		return err
	}
	defer srv.Close()
	fmt.Fprintf(out, "etcd member %s serving clients at %s\n", e.cfg.Name, srv.ClientURL)
	select {
	case <-ctx.Done():
		return nil
	case err := <-srv.Err():
		return err
	}
}
