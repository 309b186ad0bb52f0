package testenv

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// EtcdClient is a client of a fresh embedded etcd that counts the reads
// (Range calls) it sends and whose watches can be stalled: while Stall is
// held for writing, watch streams deliver nothing (a view that lags).
type EtcdClient struct {
	*clientv3.Client
	Stall  sync.RWMutex
	ranges atomic.Int64
	cut    atomic.Bool
	spans  sync.Map // key "\x00" range end -> *atomic.Int64: reads of a range
}

// CutWatches makes the next message of a watch stream an error (as a lost
// connection): the client resumes its watches from the last revision each
// received.
func (c *EtcdClient) CutWatches() { c.cut.Store(true) }

// Ranges is how many reads the client has sent to etcd.
func (c *EtcdClient) Ranges() int64 { return c.ranges.Load() }

// RangesOver is how many reads of the whole of prefix the client has sent
// (etcd visits every key of such a range, even under a limit or a count).
func (c *EtcdClient) RangesOver(prefix string) int64 {
	if n, ok := c.spans.Load(prefix + "\x00" + clientv3.GetPrefixRangeEnd(prefix)); ok {
		return n.(*atomic.Int64).Load()
	}
	return 0
}

// NewEtcdClient starts an embedded etcd and a counting, stallable client.
func NewEtcdClient(t testing.TB) *EtcdClient {
	e := StartEtcd(t)
	c := &EtcdClient{}
	count := grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
		invoke grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if strings.HasSuffix(method, "/Range") {
			c.ranges.Add(1)
			if r, ok := req.(*etcdserverpb.RangeRequest); ok && len(r.RangeEnd) > 0 {
				n, _ := c.spans.LoadOrStore(string(r.Key)+"\x00"+string(r.RangeEnd), new(atomic.Int64))
				n.(*atomic.Int64).Add(1)
			}
		}
		return invoke(ctx, method, req, reply, cc, opts...)
	})
	stall := grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
		streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		cs, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil || !strings.HasSuffix(method, "/Watch") {
			return cs, err
		}
		return &stalledStream{cs, &c.Stall, &c.cut}, nil
	})
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.ClientURL}, DialOptions: []grpc.DialOption{count, stall}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	c.Client = cli
	return c
}

type stalledStream struct {
	grpc.ClientStream
	gate *sync.RWMutex
	cut  *atomic.Bool
}

func (s *stalledStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	s.gate.RLock() // held for writing while stalled
	s.gate.RUnlock()
	if s.cut.CompareAndSwap(true, false) {
		return status.Error(codes.Unavailable, "testenv: watch stream cut")
	}
	return err
}
