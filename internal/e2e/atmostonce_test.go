package e2e

import (
	"context"
	"encoding/base64"
	"sync"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/driver"
	"github.com/corral-build/corral/internal/driver/synthetic"
	"github.com/corral-build/corral/internal/testenv"
	"github.com/corral-build/corral/internal/testenv/faultproxy"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// jobRuns records when each node's startup scripts ran, from the driver's
// side: a script runs from RunScript's call until it returned.
type jobRuns struct {
	mu   sync.Mutex
	runs []jobRun
}

type jobRun struct {
	node       string
	start, end time.Time // end zero: still running
}

func (j *jobRuns) begin(node string) int {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.runs = append(j.runs, jobRun{node: node, start: time.Now()})
	return len(j.runs) - 1
}

func (j *jobRuns) finish(i int) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.runs[i].end = time.Now()
}

func (j *jobRuns) snapshot() []jobRun {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]jobRun(nil), j.runs...)
}

// recordingDriver is the real synthetic driver with its scripts' runs
// recorded (instrumentation, not a stand-in: every call goes through).
type recordingDriver struct {
	driver.Driver
	node string
	runs *jobRuns
}

func (d recordingDriver) Start(ctx context.Context, spec driver.Spec) (driver.VM, error) {
	vm, err := d.Driver.Start(ctx, spec)
	if err != nil {
		return nil, err
	}
	return recordingVM{VM: vm, d: d}, nil
}

type recordingVM struct {
	driver.VM
	d recordingDriver
}

func (v recordingVM) RunScript(ctx context.Context, script []byte) (apiv1.ScriptResult, error) {
	i := v.d.runs.begin(v.d.node)
	defer v.d.runs.finish(i)
	return v.VM.RunScript(ctx, script)
}

// TestPartitionedNodeNeverRunsAJobTwice: a node cut off from the
// controller while its instance's job ran (a monitored script: the
// instance is not Started until it ends, so the cloud may place it again)
// must have stopped the job before the controller places it elsewhere. It
// used to be re-placed as soon as the lease expired while the cut-off
// node fenced itself a third of a TTL or more later: the job ran on both.
func TestPartitionedNodeNeverRunsAJobTwice(t *testing.T) {
	runs := &jobRuns{}
	c := testenv.StartCluster(t, testenv.Options{LeaseTTL: 3 * time.Second})
	proxy := faultproxy.New(t, c.Controllers[0].URL)
	a := c.StartNode(testenv.NodeOptions{Name: "a", Capacity: 1, ControllerURLs: []string{proxy.URL},
		Driver: recordingDriver{Driver: synthetic.New(20 * time.Millisecond), node: "a", runs: runs}})
	ctx := context.Background()
	ids, err := c.Client.StartInstances(ctx, map[string]any{"vmid": c.TemplateID, "script_monitoring": true, "script_timeout": 900,
		"startup_script": base64.StdEncoding.EncodeToString([]byte("sleep 600"))})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(runs.snapshot()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the job never started on node a")
		}
		time.Sleep(10 * time.Millisecond) // polling the recorder
	}
	// Cut node a off (a dead link: its requests, and the answers of those
	// in flight such as its long poll, hang). Node b
	// joins the moment a's lease expires: its join wakes the scheduler,
	// which used to place the instance on b at once.
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.Etcd.ClientURL}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	expired := cli.Watch(wctx, "/corral/alive/"+a.Agent.ID(), clientv3.WithFilterPut())
	proxy.Set("/", faultproxy.Fault{Cut: true})
	cut := time.Now()
	if resp := <-expired; resp.Err() != nil || len(resp.Events) == 0 {
		t.Fatalf("watching node a's lease: %v", resp.Err())
	}
	t.Logf("node a's lease expired %v after the cut", time.Since(cut))
	c.StartNode(testenv.NodeOptions{Name: "b", Capacity: 1,
		Driver: recordingDriver{Driver: synthetic.New(20 * time.Millisecond), node: "b", runs: runs}})
	in := waitInstance(t, c, ids[0], time.Minute, "placed on node b", func(in apiv1.Instance) bool {
		return in.NodeID != "" && in.NodeID != a.Agent.ID()
	})
	for {
		got := runs.snapshot()
		if len(got) >= 2 {
			break
		}
		if time.Now().After(deadline.Add(time.Minute)) {
			t.Fatalf("the job never started on node b (instance %+v)", in)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Whatever node a still runs, it stops now; then compare.
	proxy.Heal()
	_ = a.Stop()
	got := runs.snapshot()
	t.Logf("a ended %v after the cut, b started %v", got[0].end.Sub(cut), got[1].start.Sub(cut))
	first, second := got[0], got[1]
	if first.node != "a" || second.node != "b" {
		t.Fatalf("runs %+v", got)
	}
	if first.end.After(second.start) {
		t.Fatalf("the job ran on both nodes for %v: on a until %v, on b from %v", first.end.Sub(second.start),
			first.end.Format(time.StampMicro), second.start.Format(time.StampMicro))
	}
	t.Logf("node a stopped the job %v before node b started it", second.start.Sub(first.end))
}
