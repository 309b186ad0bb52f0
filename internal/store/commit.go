package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// groupCommit writes concurrent callers' transactions as one: while
// groupInFlight etcd transactions are in flight, the ones that arrive
// queue, and the next carries them all, each as a nested transaction of its
// own (its compares decide its own writes alone, and each learns its own
// outcome). A burst of terminates and of nodes' reports is then a few etcd
// revisions, WAL appends and fsyncs instead of one each; a caller alone
// waits for nothing.
type groupCommit struct {
	cli *clientv3.Client

	mu      sync.Mutex
	queue   []*pendingTxn
	running int // commit loops, at most groupInFlight
}

type pendingTxn struct {
	ctx   context.Context
	cmps  []clientv3.Cmp
	ops   []clientv3.Op
	bytes int
	done  chan txnResult
}

type txnResult struct {
	ok  bool
	err error
}

// groupInFlight is how many shared commits may be in flight at once:
// etcd pipelines them (raft batches proposals too), so one at a time would
// cost throughput under load.
const groupInFlight = 4

// etcd's defaults bound a request's bytes (1.5 MiB) and its operations: a
// branch holds at most 128, and a nested transaction at most 128 less the
// operations of the branch holding it.
const (
	groupMaxOps   = 128
	groupMaxBytes = 1 << 20
	// groupTimeout bounds one shared commit; callers still stop waiting
	// when their own context ends.
	groupTimeout = 30 * time.Second
)

// commit runs If(cmps).Then(ops) and reports whether it succeeded.
func (g *groupCommit) commit(ctx context.Context, cmps []clientv3.Cmp, ops []clientv3.Op) (bool, error) {
	r := g.commitAll(ctx, []txn{{cmps, ops}})[0]
	return r.ok, r.err
}

// txn is one caller's transaction: If(cmps).Then(ops).
type txn struct {
	cmps []clientv3.Cmp
	ops  []clientv3.Op
}

// commitAll queues several transactions at once, so they share a commit
// (each still deciding its own writes), and returns each one's outcome.
func (g *groupCommit) commitAll(ctx context.Context, txns []txn) []txnResult {
	if len(txns) == 0 {
		return nil
	}
	ps := make([]*pendingTxn, len(txns))
	for i, t := range txns {
		p := &pendingTxn{ctx: ctx, cmps: t.cmps, ops: t.ops, done: make(chan txnResult, 1)}
		for _, op := range t.ops {
			p.bytes += len(op.KeyBytes()) + len(op.ValueBytes())
		}
		ps[i] = p
	}
	g.mu.Lock()
	g.queue = append(g.queue, ps...)
	if g.running < groupInFlight {
		g.running++
		go g.loop()
	}
	g.mu.Unlock()
	out := make([]txnResult, len(ps))
	for i, p := range ps {
		select {
		case out[i] = <-p.done:
		case <-ctx.Done():
			// As with a transaction of one's own, the outcome is then unknown.
			out[i] = txnResult{err: ctx.Err()}
		}
	}
	return out
}

func (g *groupCommit) loop() {
	for {
		g.mu.Lock()
		var batch []*pendingTxn
		size, inner := 0, 0
		for len(g.queue) > 0 {
			p := g.queue[0]
			in := max(inner, len(p.cmps), len(p.ops))
			if len(batch) > 0 && (size+p.bytes > groupMaxBytes || len(batch)+1+in > groupMaxOps) {
				break
			}
			g.queue = g.queue[1:]
			if err := p.ctx.Err(); err != nil {
				p.done <- txnResult{err: err} // gone before it was sent
				continue
			}
			batch = append(batch, p)
			size, inner = size+p.bytes, in
		}
		if len(batch) == 0 {
			g.running--
			g.mu.Unlock()
			return
		}
		g.mu.Unlock()
		g.run(batch)
	}
}

// run commits a batch: one caller's transaction as it is, several as
// nested transactions of one. A batch etcd refuses as a whole (two callers
// writing one key, or an etcd configured with smaller limits) is committed
// one by one.
func (g *groupCommit) run(batch []*pendingTxn) {
	ctx, cancel := context.WithTimeout(context.Background(), groupTimeout)
	defer cancel()
	if len(batch) == 1 {
		p := batch[0]
		resp, err := g.cli.Txn(p.ctx).If(p.cmps...).Then(p.ops...).Commit()
		if err != nil {
			p.done <- txnResult{err: err}
			return
		}
		p.done <- txnResult{ok: resp.Succeeded}
		return
	}
	nested := make([]clientv3.Op, len(batch))
	for i, p := range batch {
		nested[i] = clientv3.OpTxn(p.cmps, p.ops, nil)
	}
	resp, err := g.cli.Txn(ctx).Then(nested...).Commit()
	if errors.Is(err, rpctypes.ErrDuplicateKey) || errors.Is(err, rpctypes.ErrTooManyOps) || errors.Is(err, rpctypes.ErrRequestTooLarge) {
		for _, p := range batch {
			g.run([]*pendingTxn{p})
		}
		return
	}
	if err != nil {
		for _, p := range batch {
			p.done <- txnResult{err: fmt.Errorf("shared commit of %d transactions: %w", len(batch), err)}
		}
		return
	}
	for i, p := range batch {
		p.done <- txnResult{ok: resp.Responses[i].GetResponseTxn().GetSucceeded()}
	}
}
