package client

import (
	"context"
	"sync"
)

// parallel runs work(ctx, i) for every i in [0, n) on the given number of
// workers. newWorker is called once per worker, so each can own its buffers.
// The first error cancels the rest and is returned.
func parallel(ctx context.Context, n, workers int, newWorker func() func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for range max(workers, 1) {
		work := newWorker()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := work(ctx, i); err != nil {
					cancel(err)
					return
				}
			}
		}()
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	return context.Cause(ctx)
}
