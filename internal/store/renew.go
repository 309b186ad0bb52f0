package store

import (
	"context"
	"fmt"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// renewer renews node leases over one LeaseKeepAlive stream kept open for
// all of them. clientv3's KeepAliveOnce opens a stream per call: with 1,000
// nodes heartbeating that was 200 streams a second set up and torn down on
// both sides. Answers come back in order on the stream; each is handed to
// every caller waiting on its lease.
type renewer struct {
	cli   *clientv3.Client
	lease pb.LeaseClient // nil: over cli's connection

	mu  sync.Mutex
	cur *renewStream
}

type renewStream struct {
	stream pb.Lease_LeaseKeepAliveClient
	cancel context.CancelFunc

	mu      sync.Mutex
	send    sync.Mutex
	dead    error
	waiting map[int64][]chan renewAnswer
}

type renewAnswer struct {
	ttl int64
	err error
}

// stream returns the open stream, opening one if there is none.
func (r *renewer) stream() (*renewStream, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur != nil {
		return r.cur, nil
	}
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(r.cli.Ctx()))
	lc := r.lease
	if lc == nil {
		lc = pb.NewLeaseClient(r.cli.ActiveConnection())
	}
	stream, err := lc.LeaseKeepAlive(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	rs := &renewStream{stream: stream, cancel: cancel, waiting: map[int64][]chan renewAnswer{}}
	r.cur = rs
	go r.receive(rs)
	return rs, nil
}

// receive hands each answer to the callers waiting on its lease; when the
// stream breaks it fails every caller still waiting and lets the next call
// open another.
func (r *renewer) receive(rs *renewStream) {
	for {
		resp, err := rs.stream.Recv()
		if err != nil {
			r.mu.Lock()
			if r.cur == rs {
				r.cur = nil
			}
			r.mu.Unlock()
			rs.cancel()
			rs.mu.Lock()
			rs.dead = err
			for _, chs := range rs.waiting {
				for _, ch := range chs {
					ch <- renewAnswer{err: err}
				}
			}
			rs.waiting = nil
			rs.mu.Unlock()
			return
		}
		rs.mu.Lock()
		chs := rs.waiting[resp.ID]
		delete(rs.waiting, resp.ID)
		rs.mu.Unlock()
		for _, ch := range chs {
			ch <- renewAnswer{ttl: resp.TTL}
		}
	}
}

// renew renews lease once and returns its new TTL (<= 0: no such lease).
func (r *renewer) renew(ctx context.Context, lease int64) (int64, error) {
	rs, err := r.stream()
	if err != nil {
		return 0, err
	}
	ch := make(chan renewAnswer, 1)
	rs.mu.Lock()
	if rs.dead != nil {
		rs.mu.Unlock()
		return 0, rs.dead
	}
	rs.waiting[lease] = append(rs.waiting[lease], ch)
	rs.mu.Unlock()
	rs.send.Lock()
	err = rs.stream.Send(&pb.LeaseKeepAliveRequest{ID: lease})
	rs.send.Unlock()
	if err != nil {
		rs.cancel() // receive fails every waiter, this one too
	}
	select {
	case a := <-ch:
		return a.ttl, a.err
	case <-ctx.Done():
		// The answer may still come: ch is buffered and dropped with us.
		return 0, ctx.Err()
	}
}

// RenewOver sends the lease renewals over lc (an in-process member's)
// instead of the client's connection; before the store is used.
func (s *Store) RenewOver(lc pb.LeaseClient) { s.renew.lease = lc }

// KeepAlive renews a node's lease once. Lease renewal is not a write to the
// key space, so heartbeats do not grow etcd's history.
func (s *Store) KeepAlive(ctx context.Context, leaseID int64) error {
	ttl, err := s.renew.renew(ctx, leaseID)
	if err != nil {
		return fmt.Errorf("renew lease %x: %w", leaseID, err)
	}
	if ttl <= 0 {
		return ErrLeaseExpired
	}
	return nil
}
