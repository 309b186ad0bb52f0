package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/controller/daemon"
	"github.com/corral-build/corral/internal/etcdadmin"
	"github.com/corral-build/corral/internal/etcdembed"
	"github.com/corral-build/corral/internal/store"
	"github.com/corral-build/corral/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func freeURL(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return "http://" + l.Addr().String()
}

// TestSnapshotRestore: `corral etcd snapshot save` while the cloud runs,
// `snapshot restore` into a new data directory, a fresh embedded etcd and
// controller on it list the same nodes, groups and instances.
func TestSnapshotRestore(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Nodes: []testenv.NodeOptions{
		{Name: "a", Capacity: 3, Groups: []string{"mac-arm"}}, {Name: "b", Capacity: 3, Groups: []string{"linux"}}}})
	ctx := context.Background()
	for range 3 {
		if _, err := c.Client.StartInstances(ctx, map[string]any{"vmid": c.TemplateID, "count": 2}); err != nil {
			t.Fatal(err)
		}
	}
	before := snapshotOfAPI(t, c.Client)

	bin := corralBinary(t)
	snap := filepath.Join(t.TempDir(), "corral.snapshot")
	if out, err := exec.Command(bin, "etcd", "snapshot", "save", snap, "--etcd-endpoints", c.Etcd.ClientURL).CombinedOutput(); err != nil {
		t.Fatalf("snapshot save: %v\n%s", err, out)
	}
	dataDir := filepath.Join(t.TempDir(), "restored")
	peer := freeURL(t)
	if out, err := exec.Command(bin, "etcd", "snapshot", "restore", snap, "--data-dir", dataDir, "--etcd-peer-url", peer).CombinedOutput(); err != nil {
		t.Fatalf("snapshot restore: %v\n%s", err, out)
	}
	d, err := daemon.Start(ctx, daemon.Config{ListenAddr: "127.0.0.1:0", TemplatesFile: c.TemplatesFile,
		Embedded:     etcdembed.Config{DataDir: dataDir, ClientURL: "http://127.0.0.1:0", PeerURL: peer, Quiet: true},
		EtcdLogLevel: "off", Log: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	restored, _ := client.New([]string{d.URL}, "")
	after := snapshotOfAPI(t, restored)
	for _, kind := range []string{"nodes", "groups", "instances"} {
		if !slices.Equal(before[kind], after[kind]) {
			t.Errorf("%s differ after restore:\n before %v\n after  %v", kind, before[kind], after[kind])
		}
	}
	if len(before["instances"]) != 6 || len(before["nodes"]) != 2 || len(before["groups"]) != 2 {
		t.Fatalf("unexpected source state %v", before)
	}
}

// snapshotOfAPI lists ids of nodes, groups and instances as the API shows them.
func snapshotOfAPI(t *testing.T, cl *client.Controller) map[string][]string {
	ctx := context.Background()
	nodes, err := cl.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	items, err := cl.Instances(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, n := range nodes {
		out["nodes"] = append(out["nodes"], n.NodeID+"/"+n.NodeName)
		for _, g := range n.Groups {
			out["groups"] = append(out["groups"], g.ID+"/"+g.Name)
		}
	}
	for _, it := range items {
		out["instances"] = append(out["instances"], it.InstanceID+"/"+it.VM.VMID)
	}
	for k := range out {
		slices.Sort(out[k])
	}
	return out
}

func TestEtcdStatusDefragAndPerf(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{})
	ctx := context.Background()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.Etcd.ClientURL}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	sts, err := etcdadmin.GetStatus(ctx, cli)
	if err != nil || len(sts) != 1 || sts[0].DBSize <= 0 || !sts[0].IsLeader || sts[0].Revision <= 0 {
		t.Fatalf("status %+v %v", sts, err)
	}
	// With an instance waiting for a node, defrag refuses unless forced.
	if _, err := c.Client.StartInstances(ctx, map[string]any{"vmid": c.TemplateID}); err != nil {
		t.Fatal(err)
	}
	st := store.New(cli, "")
	if _, err := etcdadmin.Defrag(ctx, cli, st, false); !errors.Is(err, etcdadmin.ErrBusy) || !strings.Contains(err.Error(), "1 instances are Scheduling") {
		t.Fatalf("defrag while busy: %v", err)
	}
	if done, err := etcdadmin.Defrag(ctx, cli, st, true); err != nil || len(done) != 1 {
		t.Fatalf("forced defrag: %v %v", done, err)
	}
	res, err := etcdadmin.CheckPerf(ctx, cli, time.Second, etcdadmin.PerfLimits{Clients: 10, TargetRate: 100,
		MaxSlowest: time.Minute, MaxStddev: time.Minute})
	// No rate is asserted: a busy machine writes slowly (this asked 50 a second once).
	if err != nil || res.Writes < 1 || res.WritesPerS <= 0 || res.Slowest <= 0 {
		t.Fatalf("perf %+v %v", res, err)
	}
	impossible := etcdadmin.PerfLimits{Clients: 2, TargetRate: 1e6, MaxSlowest: time.Nanosecond, MaxStddev: 0}
	res, err = etcdadmin.CheckPerf(ctx, cli, 200*time.Millisecond, impossible)
	if err != nil || len(res.Failures) != 3 {
		t.Fatalf("impossible limits must FAIL on throughput, slowest and stddev: %+v %v", res, err)
	}
	if left, _ := cli.Get(ctx, "/corral-check-perf/", clientv3.WithPrefix(), clientv3.WithCountOnly()); left.Count != 0 {
		t.Fatalf("check perf left %d keys", left.Count)
	}
}

// TestControllerWithoutEtcd: a controller whose etcd is not there says so
// and exits, instead of hanging.
func TestControllerWithoutEtcd(t *testing.T) {
	_, err := daemon.Start(context.Background(), daemon.Config{ListenAddr: "127.0.0.1:0",
		EtcdEndpoints: []string{freeURL(t)}, EtcdTimeout: time.Second, EtcdLogLevel: "off", Log: testenv.Logger(t)})
	if err == nil || !strings.Contains(err.Error(), "is not reachable (gave up after 1s)") {
		t.Fatalf("got %v", err)
	}
}

// TestScheduledDefrag: with --defrag-interval (ANKA_DEFRAG_DB_INTERVAL) the
// scheduler leader defragments etcd, giving back the space compaction freed.
func TestScheduledDefrag(t *testing.T) {
	e := testenv.StartEtcd(t)
	ctx := context.Background()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.ClientURL}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	value := strings.Repeat("x", 8<<10)
	for i := range 2000 {
		if _, err := cli.Put(ctx, fmt.Sprintf("/junk/%d", i), value); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := cli.Delete(ctx, "/junk/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	dbSize := func() int64 {
		st, err := cli.Status(ctx, e.ClientURL)
		if err != nil {
			t.Fatal(err)
		}
		return st.DbSize
	}
	before := dbSize()
	if before < 16<<20 {
		t.Fatalf("test setup: db only %d bytes", before)
	}
	d, err := daemon.Start(ctx, daemon.Config{ListenAddr: "127.0.0.1:0", EtcdEndpoints: []string{e.ClientURL},
		JoinToken: "t", SchedulerTTL: 2 * time.Second, DefragInterval: 300 * time.Millisecond,
		EtcdLogLevel: "off", Log: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for deadline := time.Now().Add(20 * time.Second); dbSize() > before/2; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("db still %d bytes (was %d): no defragmentation", dbSize(), before)
		}
	}
}

// TestExternalEtcdWithLogin: a controller logs in to an external etcd that
// has authentication enabled (the reference's ANKA_USE_ETCD_LOGIN), and one
// without the credentials is refused with a clear error, not a hang.
func TestExternalEtcdWithLogin(t *testing.T) {
	e := testenv.StartEtcd(t)
	ctx := context.Background()
	admin, err := clientv3.New(clientv3.Config{Endpoints: []string{e.ClientURL}})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	for _, step := range []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "r00t-pw"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatalf("enable etcd auth: %v", err)
		}
	}
	start := func(user, pass string) (*daemon.Daemon, error) {
		return daemon.Start(ctx, daemon.Config{ListenAddr: "127.0.0.1:0", EtcdEndpoints: []string{e.ClientURL},
			EtcdUsername: user, EtcdPassword: pass, EtcdTimeout: 5 * time.Second, JoinToken: "t",
			TemplatesFile: t.TempDir() + "/templates.json", EtcdLogLevel: "off", Log: testenv.Logger(t)})
	}
	if d, err := start("", ""); err == nil {
		d.Close()
		t.Fatal("a controller without etcd credentials started against an etcd with auth on")
	}
	d, err := start("root", "r00t-pw")
	if err != nil {
		t.Fatalf("with the etcd login: %v", err)
	}
	defer d.Close()
	if code, _ := authCall(t, "GET", d.URL+"/api/v1/node", "", ""); code != 200 {
		t.Fatalf("controller over an authenticated etcd: HTTP %d", code)
	}
}
