package store

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/etcdembed"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestDesiredOfRemovedNodesIsDropped: the view keeps a node's desired
// state (and its last change, which polls compare) while the node is
// registered, and forgets it once the node is removed and nothing of it is
// left, so the entries of nodes that came and went do not pile up.
func TestDesiredOfRemovedNodesIsDropped(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cli := newEtcdClient(t)
	st := New(cli, "")
	st.EnableView(ctx)
	for _, id := range []string{"stays", "goes"} {
		if _, err := st.JoinNode(ctx, apiv1.NodeReport{NodeID: id, NodeName: id}, nil, 30); err != nil {
			t.Fatal(err)
		}
	}
	pull := apiv1.Distribution{RequestID: "d1", Nodes: map[string]string{"stays": "", "goes": ""}}
	if err := st.CreateDistribution(ctx, pull, apiv1.Prefetch{RequestID: "d1", VMID: "t1", Tag: "v1"}); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteNode(ctx, "goes"); err != nil {
		t.Fatal(err)
	}
	// The pull ends on both nodes.
	for _, node := range []string{"stays", "goes"} {
		if _, err := cli.Delete(ctx, st.distributeKey(node, "d1")); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); !st.ViewCaughtUp(ctx); {
		if time.Now().After(deadline) {
			t.Fatal("the view did not catch up with etcd in 10 s")
		}
	}
	v := st.view
	v.mu.RLock()
	defer v.mu.RUnlock()
	if d := v.desired["stays"]; d == nil || d.changed == 0 || len(d.distribute) != 0 {
		t.Errorf("a registered node's entry: %+v, want it kept, empty, with its last change", d)
	}
	if d, ok := v.desired["goes"]; ok {
		t.Errorf("a removed node's entry was kept: %+v", d)
	}
}

// newEtcdClient is a client of a fresh embedded etcd (testenv, which
// imports this package, cannot serve its own tests).
func newEtcdClient(t *testing.T) *clientv3.Client {
	e, err := etcdembed.Start(etcdembed.Config{DataDir: filepath.Join(t.TempDir(), "etcd"),
		ClientURL: "http://127.0.0.1:0", PeerURL: "http://127.0.0.1:0", Quiet: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.ClientURL}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
