package etcdembed_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/etcdembed"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
)

// TestInProcessClient: a client pointed at its lone member in process sends
// no key-value, watch or lease call over gRPC, and what the store relies on
// behaves as over the network: reads, transactions and their errors (the
// group commit falls back on "too many operations"), watches with progress
// notifications, lease grants and renewals on a stream.
func TestInProcessClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := etcdembed.Start(etcdembed.Config{DataDir: filepath.Join(t.TempDir(), "etcd"), ClientURL: "http://127.0.0.1:0", PeerURL: "http://127.0.0.1:0", Quiet: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	var calls atomic.Int64
	count := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoke grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		calls.Add(1)
		return invoke(ctx, method, req, reply, cc, opts...)
	}
	countStreams := func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		calls.Add(1)
		return streamer(ctx, desc, cc, method, opts...)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.ClientURL}, DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(count), grpc.WithChainStreamInterceptor(countStreams)}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	lc, ok := e.InProcess(cli)
	if !ok {
		t.Fatal("a lone member was not used in process")
	}
	before := calls.Load()

	watch := cli.Watch(clientv3.WithRequireLeader(ctx), "k", clientv3.WithProgressNotify())
	put, err := cli.Put(ctx, "k", "v")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := cli.Get(ctx, "k"); err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "v" {
		t.Fatalf("get: %v, %v", got, err)
	}
	if wr := <-watch; wr.Err() != nil || len(wr.Events) != 1 || wr.Events[0].Kv.ModRevision != put.Header.Revision {
		t.Fatalf("watch: %+v, %v", wr, wr.Err())
	}
	if err := cli.RequestProgress(clientv3.WithRequireLeader(ctx)); err != nil { // on the watch's stream
		t.Fatal(err)
	}
	if wr := <-watch; !wr.IsProgressNotify() || wr.Header.Revision < put.Header.Revision {
		t.Fatalf("progress: %+v", wr)
	}
	var ops []clientv3.Op
	for i := range 200 { // etcd's default limit is 128 operations a transaction
		ops = append(ops, clientv3.OpPut(fmt.Sprint("many/", i), "x"))
	}
	if _, err := cli.Txn(ctx).Then(ops...).Commit(); !errors.Is(err, rpctypes.ErrTooManyOps) {
		t.Fatalf("a transaction of 200 operations: %v, want %v", err, rpctypes.ErrTooManyOps)
	}
	lease, err := cli.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := lc.LeaseKeepAlive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&pb.LeaseKeepAliveRequest{ID: int64(lease.ID)}); err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); err != nil || resp.ID != int64(lease.ID) || resp.TTL <= 0 {
		t.Fatalf("renewal: %+v, %v", resp, err)
	}
	if n := calls.Load() - before; n != 0 {
		t.Errorf("%d calls went over gRPC", n)
	}
	// What stays on the network: the per-member status the etcd care asks.
	if _, err := cli.Status(ctx, e.ClientURL); err != nil {
		t.Fatal(err)
	}
}
