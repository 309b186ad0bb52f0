package controller_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/store"
	"github.com/corral-build/corral/internal/testenv"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestReportIsOneRevisionPerRound: a node's report on many instances is
// written in one etcd transaction (it was one per instance: 10k instance
// lifecycles cost 5.5 revisions each), while an instance reported twice in
// one report still passes through both states, each a revision of its own
// that watchers (the event log) see.
func TestReportIsOneRevisionPerRound(t *testing.T) {
	ctx := context.Background()
	e := testenv.StartEtcd(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.ClientURL}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	st := store.New(cli, "")
	svc := controller.New(st, nil, controller.Config{}, testenv.Logger(t))
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
