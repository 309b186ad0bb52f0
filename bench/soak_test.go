package bench

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/events"
	"github.com/corral-build/corral/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// soakBound is the stated bound on etcd's in-use database after compaction:
// what stays is nodes, groups and unexpired instances, not history.
const soakBound = 16 << 20

// BenchmarkSoak runs CORRAL_SOAK_NODES synthetic nodes (200) through
// CORRAL_SOAK_CYCLES instance start/terminate cycles (20000) and prints
// etcd's database size before, after, and after compaction.
func BenchmarkSoak(b *testing.B) {
	nodes, cycles := envInt("CORRAL_SOAK_NODES", 200), envInt("CORRAL_SOAK_CYCLES", 20000)
	for range b.N {
		opts := testenv.Options{Retention: 2 * time.Second, LeaseTTL: 10 * time.Second}
		for i := range nodes {
			opts.Nodes = append(opts.Nodes, testenv.NodeOptions{Name: fmt.Sprint("soak-", i), Capacity: 2})
		}
		c := testenv.StartCluster(b, opts)
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.Etcd.ClientURL}})
		if err != nil {
			b.Fatal(err)
		}
		defer cli.Close()
		ctx := context.Background()
		size := func() (int64, int64, int64) {
			st, err := cli.Status(ctx, c.Etcd.ClientURL)
			if err != nil {
				b.Fatal(err)
			}
			return st.DbSize, st.DbSizeInUse, st.Header.Revision
		}
		before, _, _ := size()
		start := time.Now()
		batch := min(nodes, 100) // a batch fits in the cloud's capacity
		lastID := ""
		for done := 0; done < cycles; done += batch {
			ids, err := c.Client.StartInstances(ctx, map[string]any{"vmid": c.TemplateID, "count": min(batch, cycles-done)})
			if err != nil {
				b.Fatal(err)
			}
			for _, id := range ids {
				wctx, cancel := context.WithTimeout(ctx, time.Minute)
				if _, err := c.Client.WaitState(wctx, id, apiv1.StateStarted); err != nil {
					b.Fatal(err)
				}
				cancel()
			}
			lastID = ids[len(ids)-1]
			for _, id := range ids {
				if err := c.Client.Terminate(ctx, id); err != nil {
					b.Fatal(err)
				}
			}
		}
		took := time.Since(start)
		// The event log: it keeps up (the last termination is recorded) and
		// stays within its bound, trimmed every 1/20th of it.
		evBound := events.DefaultMaxCount + min(200, events.DefaultMaxCount/20) + 100
		var evCount, evBytes int64
		deadline := time.Now().Add(time.Minute)
		for {
			last, err := c.Client.Events(ctx, url.Values{"type": {apiv1.EventInstanceTerminated}, "limit": {"1"}})
			if err != nil {
				b.Fatal(err)
			}
			if len(last) == 1 && last[0].InstanceID == lastID {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("the event log did not record the last termination within a minute")
			}
			time.Sleep(100 * time.Millisecond)
		}
		resp, err := cli.Get(ctx, "/corral/events/", clientv3.WithPrefix())
		if err != nil {
			b.Fatal(err)
		}
		evCount = resp.Count
		for _, kv := range resp.Kvs {
			evBytes += int64(len(kv.Key) + len(kv.Value))
		}
		time.Sleep(6 * time.Second) // retention (2s) + a purge pass
		after, afterInUse, rev := size()
		// Physical compaction waits until old revisions are really gone.
		if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
			b.Fatal(err)
		}
		if _, err := cli.Defragment(ctx, c.Etcd.ClientURL); err != nil {
			b.Fatal(err)
		}
		compacted, compactedInUse, _ := size()
		left, _ := c.Client.Instances(ctx, "")
		fmt.Printf("soak: %d nodes, %d start/terminate cycles in %s (%.0f cycles/s), revision %d\n",
			nodes, cycles, took.Round(time.Second), float64(cycles)/took.Seconds(), rev)
		fmt.Printf("  etcd db: before %s; after %s (in use %s); after compaction+defrag %s (in use %s); instances left %d\n",
			mib(before), mib(after), mib(afterInUse), mib(compacted), mib(compactedInUse), len(left))
		fmt.Printf("  bound: in use after compaction <= %s, independent of the number of cycles\n", mib(soakBound))
		fmt.Printf("  event log: %d events, %s (bound %d events: %d kept, trimmed every %d written, batches up to 100)\n",
			evCount, mib(evBytes), evBound, events.DefaultMaxCount, min(200, events.DefaultMaxCount/20))
		if evCount > int64(evBound) {
			b.Fatalf("event log holds %d events, bound %d", evCount, evBound)
		}
		if compactedInUse > soakBound {
			b.Fatalf("etcd in-use size %s after compaction exceeds the %s bound", mib(compactedInUse), mib(soakBound))
		}
		b.ReportMetric(float64(compactedInUse)/(1<<20), "inuse_MiB")
	}
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
