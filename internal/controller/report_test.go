package controller_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/store"
	"github.com/corral-build/corral/internal/testenv"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// newService is a controller service on a fresh embedded etcd; setup
// runs on the store before the service is made.
func newService(t *testing.T, setup func(*store.Store)) (*clientv3.Client, *store.Store, *controller.Service) {
	e := testenv.StartEtcd(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.ClientURL}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	st := store.New(cli, "")
	if setup != nil {
		setup(st)
	}
	return cli, st, controller.New(st, nil, controller.Config{}, testenv.Logger(t))
}

// TestReportIsOneRevisionPerRound: a node's report on many instances is
// written in one etcd transaction (it was one per instance: 10k instance
// lifecycles cost 5.5 revisions each), while an instance reported twice in
// one report still passes through both states, each a revision of its own
// that watchers (the event log) see.
func TestReportIsOneRevisionPerRound(t *testing.T) {
	ctx := context.Background()
	cli, st, svc := newService(t, nil)
	if _, err := st.JoinNode(ctx, apiv1.NodeReport{NodeID: "n1", NodeName: "n1", Capacity: 20}, nil, 10); err != nil {
		t.Fatal(err)
	}
	var recs []store.InstanceRecord
	var report []apiv1.InstanceStatus
	for i := range 10 {
		id := fmt.Sprint("i", i)
		recs = append(recs, store.InstanceRecord{Instance: apiv1.Instance{InstanceID: id, State: apiv1.StateScheduling, NodeID: "n1"}, SlotHeld: true})
		report = append(report, apiv1.InstanceStatus{InstanceID: id, State: apiv1.StatePulling})
	}
	recs = append(recs, store.InstanceRecord{Instance: apiv1.Instance{InstanceID: "elsewhere", State: apiv1.StateScheduling, NodeID: "n2"}, SlotHeld: true})
	if err := st.CreateInstances(ctx, recs); err != nil {
		t.Fatal(err)
	}
	report = append(report,
		apiv1.InstanceStatus{InstanceID: "i3", State: apiv1.StateStarted},
		apiv1.InstanceStatus{InstanceID: "i4", State: apiv1.StateStarted},
		apiv1.InstanceStatus{InstanceID: "elsewhere", State: apiv1.StateStarted}, // not bound to n1: ignored
		apiv1.InstanceStatus{InstanceID: "gone", State: apiv1.StateStarted})      // no such instance: ignored
	before, err := cli.Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	rev := before.Header.Revision
	watch := cli.Watch(ctx, st.Key("instances/"), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	if err := svc.ReportStatus(ctx, apiv1.StatusReport{NodeID: "n1", Instances: report}); err != nil {
		t.Fatal(err)
	}
	after, _ := cli.Get(ctx, "x")
	if n := after.Header.Revision - rev; n != 2 {
		t.Errorf("a report on 10 instances, two of them twice, took %d etcd revisions, want 2", n)
	}
	seen := map[string][]string{}
	for puts := 0; puts < 12; {
		wr := <-watch
		for _, ev := range wr.Events {
			if ev.Type != mvccpb.PUT {
				continue
			}
			var r store.InstanceRecord
			if err := json.Unmarshal(ev.Kv.Value, &r); err != nil {
				t.Fatal(err)
			}
			seen[r.InstanceID] = append(seen[r.InstanceID], r.State)
			puts++
		}
	}
	for i := range 10 {
		id := fmt.Sprint("i", i)
		want := []string{apiv1.StatePulling}
		if i == 3 || i == 4 {
			want = append(want, apiv1.StateStarted)
		}
		if fmt.Sprint(seen[id]) != fmt.Sprint(want) {
			t.Errorf("%s went through %v, want %v", id, seen[id], want)
		}
	}
	if r, _ := st.GetInstance(ctx, "elsewhere"); r.State != apiv1.StateScheduling {
		t.Errorf("an instance bound to another node was changed to %s", r.State)
	}
}

// TestIdleReportsWriteNothing: a node's periodic report whose measurements
// only drift is not written (1,000 idle nodes made 67 etcd writes a
// second); a change that matters is, and so is a report once the stored
// one is half a minute old (apiv1.ReportRefresh/2).
func TestIdleReportsWriteNothing(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cli, st, svc := newService(t, func(st *store.Store) { st.EnableView(ctx) })
	report := apiv1.NodeReport{NodeID: "n1", NodeName: "n1", Capacity: 4, CPUUtil: 0.20, RAMUtil: 0.50, FreeDiskSpace: 100 << 30,
		Templates: []apiv1.NodeTemplate{{UUID: "t1", Tag: "v1"}}}
	if _, err := st.JoinNode(ctx, report, nil, 30); err != nil {
		t.Fatal(err)
	}
	rev := func() int64 {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !st.ViewCaughtUp(ctx); {
			if time.Now().After(deadline) {
				t.Fatal("the view did not catch up with etcd in 10 s")
			}
			select {
			case <-time.After(10 * time.Millisecond): // the view starts: poll its sync
			case <-ctx.Done():
			}
		}
		r, _ := cli.Get(ctx, "x")
		return r.Header.Revision
	}
	before := rev()
	drift := report
	drift.CPUUtil, drift.RAMUtil, drift.FreeDiskSpace = 0.23, 0.52, 100<<30-5<<20
	for range 5 {
		if err := svc.UpdateReport(ctx, drift); err != nil {
			t.Fatal(err)
		}
	}
	if n := rev() - before; n != 0 {
		t.Errorf("5 reports that only drifted wrote %d revisions", n)
	}
	changed := drift
	changed.Templates = append(changed.Templates, apiv1.NodeTemplate{UUID: "t2", Tag: "v1"})
	busy := drift
	busy.CPUUtil = 0.9
	for _, r := range []apiv1.NodeReport{changed, busy} {
		before = rev()
		if err := svc.UpdateReport(ctx, r); err != nil {
			t.Fatal(err)
		}
		if rev() == before {
			t.Errorf("a report that changed (templates %d, CPU %.2f) was not written", len(r.Templates), r.CPUUtil)
		}
	}
}
