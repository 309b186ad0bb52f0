// Package etcdadmin holds the etcd care operators need, for embedded and
// external etcd alike: snapshot save and restore, status, defragmentation
// (refused while the cloud is busy) and a write performance check.
package etcdadmin

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/store"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/snapshot"
	utlsnap "go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap"
)

// SnapshotSave writes a consistent snapshot of the member at endpoint to
// path while it keeps serving (write to a temp file, fsync, rename).
func SnapshotSave(ctx context.Context, endpoint, path string) error {
	_, err := snapshot.SaveWithVersion(ctx, zap.NewNop(), clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second}, path)
	if err != nil {
		return fmt.Errorf("snapshot save from %s: %w", endpoint, err)
	}
	return nil
}

// RestoreConfig describes the new member a snapshot seeds.
type RestoreConfig struct {
	Snapshot string
	DataDir  string // must not exist yet
	Name     string // member name ("default")
	PeerURL  string // the new member's peer URL
}

// SnapshotRestore creates a new etcd data directory from a snapshot, for a
// new single-member cluster on a new host.
func SnapshotRestore(cfg RestoreConfig) error {
	if cfg.Name == "" {
		cfg.Name = "default"
	}
	if cfg.PeerURL == "" {
		cfg.PeerURL = "http://127.0.0.1:2380"
	}
	err := utlsnap.NewV3(zap.NewNop()).Restore(utlsnap.RestoreConfig{
		SnapshotPath: cfg.Snapshot, Name: cfg.Name, OutputDataDir: cfg.DataDir,
		PeerURLs: []string{cfg.PeerURL}, InitialCluster: cfg.Name + "=" + cfg.PeerURL,
		InitialClusterToken: "etcd-cluster",
	})
	if err != nil {
		return fmt.Errorf("snapshot restore %s into %s: %w", cfg.Snapshot, cfg.DataDir, err)
	}
	return nil
}

// Status is what `corral etcd status` shows.
type Status struct {
	Endpoint       string
	Version        string
	DBSize         int64
	DBSizeInUse    int64
	Revision       int64
	Leader         uint64
	MemberID       uint64
	IsLeader       bool
	RaftTerm       uint64
	QuotaBackend   int64 // 0 when unknown
	CompactionNote string
	Instances      map[string]int
	Err            string // the endpoint did not answer
}

// StatusTimeout bounds each endpoint's status call.
const StatusTimeout = 5 * time.Second

// GetStatus asks every endpoint for its status, each within StatusTimeout:
// a dead member is listed with Err, never stalls the others (it hung 640 s
// on one dead endpoint). It fails only when no endpoint answered.
func GetStatus(ctx context.Context, cli *clientv3.Client) ([]Status, error) {
	var out []Status
	answered := 0
	for _, ep := range cli.Endpoints() {
		sctx, cancel := context.WithTimeout(ctx, StatusTimeout)
		st, err := cli.Status(sctx, ep)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return out, ctx.Err()
			}
			out = append(out, Status{Endpoint: ep, Err: err.Error()})
			continue
		}
		answered++
		out = append(out, Status{Endpoint: ep, Version: st.Version, DBSize: st.DbSize, DBSizeInUse: st.DbSizeInUse,
			Revision: st.Header.Revision, Leader: st.Leader, MemberID: st.Header.MemberId,
			IsLeader: st.Leader == st.Header.MemberId, RaftTerm: st.RaftTerm})
	}
	if answered == 0 && len(out) > 0 {
		return out, fmt.Errorf("no etcd endpoint answered: %s: %s", out[0].Endpoint, out[0].Err)
	}
	return out, nil
}

// ErrBusy means instances are being placed or pulled, when defragmentation
// would block their writes.
var ErrBusy = errors.New("the cloud is busy")

// Defrag defragments every endpoint one at a time. It blocks writes to the
// member while it runs, so it refuses while instances are Scheduling or
// Pulling unless force is set.
func Defrag(ctx context.Context, cli *clientv3.Client, st *store.Store, force bool) ([]string, error) {
	if !force {
		recs, err := st.ListInstances(ctx)
		if err != nil {
			return nil, err
		}
		busy := 0
		for _, r := range recs {
			if r.State == apiv1.StateScheduling || r.State == apiv1.StatePulling {
				busy++
			}
		}
		if busy > 0 {
			return nil, fmt.Errorf("%w: %d instances are Scheduling or Pulling; defragmentation blocks writes (use --force to run anyway)", ErrBusy, busy)
		}
	}
	var done []string
	for _, ep := range cli.Endpoints() {
		if _, err := cli.Defragment(ctx, ep); err != nil {
			return done, fmt.Errorf("defragment %s: %w", ep, err)
		}
		done = append(done, ep)
	}
	return done, nil
}

// PerfResult is the outcome of a write performance check.
type PerfResult struct {
	Writes     int
	Duration   time.Duration
	WritesPerS float64
	Slowest    time.Duration
	Stddev     time.Duration
	Failures   []string // limits not met; empty = PASS
}

// PerfLimits are the pass marks, those of etcdctl's "small" check.
type PerfLimits struct {
	Clients    int
	TargetRate float64 // writes/s offered; PASS needs >= 90% of it
	MaxSlowest time.Duration
	MaxStddev  time.Duration
}

// DefaultPerfLimits mirror `etcdctl check perf --load=s`.
var DefaultPerfLimits = PerfLimits{Clients: 50, TargetRate: 150, MaxSlowest: 500 * time.Millisecond, MaxStddev: 100 * time.Millisecond}

// CheckPerf offers TargetRate writes/s of 256-byte values from Clients
// clients for d, under a scratch prefix it deletes afterwards.
func CheckPerf(ctx context.Context, cli *clientv3.Client, d time.Duration, lim PerfLimits) (PerfResult, error) {
	prefix := fmt.Sprintf("/corral-check-perf/%d/", time.Now().UnixNano())
	defer cli.Delete(context.WithoutCancel(ctx), prefix, clientv3.WithPrefix())
	value := string(make([]byte, 256))
	tick := time.NewTicker(time.Duration(float64(time.Second) / lim.TargetRate))
	defer tick.Stop()
	jobs := make(chan int)
	var mu sync.Mutex
	var lat []time.Duration
	var firstErr error
	var wg sync.WaitGroup
	for range lim.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				start := time.Now()
				_, err := cli.Put(ctx, fmt.Sprintf("%s%08d", prefix, i), value)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				lat = append(lat, time.Since(start))
				mu.Unlock()
			}
		}()
	}
	start := time.Now()
	deadline := time.After(d)
feed:
	for i := 0; ; i++ {
		select {
		case <-deadline:
			break feed
		case <-ctx.Done():
			break feed
		case <-tick.C:
			jobs <- i
		}
	}
	close(jobs)
	wg.Wait()
	if firstErr != nil {
		return PerfResult{}, fmt.Errorf("check perf: %w", firstErr)
	}
	res := PerfResult{Writes: len(lat), Duration: time.Since(start)}
	res.WritesPerS = float64(res.Writes) / res.Duration.Seconds()
	if len(lat) > 0 {
		res.Slowest = slices.Max(lat)
		var sum, sq float64
		for _, l := range lat {
			sum += float64(l)
		}
		mean := sum / float64(len(lat))
		for _, l := range lat {
			sq += (float64(l) - mean) * (float64(l) - mean)
		}
		res.Stddev = time.Duration(math.Sqrt(sq / float64(len(lat))))
	}
	if res.WritesPerS < 0.9*lim.TargetRate {
		res.Failures = append(res.Failures, fmt.Sprintf("throughput %.0f writes/s is below 90%% of %.0f", res.WritesPerS, lim.TargetRate))
	}
	if res.Slowest > lim.MaxSlowest {
		res.Failures = append(res.Failures, fmt.Sprintf("slowest request %s is over %s", res.Slowest, lim.MaxSlowest))
	}
	if res.Stddev > lim.MaxStddev {
		res.Failures = append(res.Failures, fmt.Sprintf("stddev %s is over %s", res.Stddev, lim.MaxStddev))
	}
	return res, nil
}
