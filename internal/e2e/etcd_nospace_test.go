package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/testenv"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestEtcdOutOfSpace: an etcd at its quota (an external cluster someone
// else fills) answered every start, update and even terminate with HTTP
// 500 "mvcc: database space exceeded". Now lists work, terminates work (by
// deleting the instance: etcd takes deletes), other writes get a 507 that
// says what to do, a metric counts them, and the cloud recovers after
// compaction, defragmentation and the alarm's disarm.
func TestEtcdOutOfSpace(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{EtcdQuota: 32 << 20, Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 2}}})
	ctx := context.Background()
	base := c.Controllers[0].URL
	ids, err := c.Client.StartInstances(ctx, map[string]any{"vmid": c.TemplateID, "count": 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		c.WaitState(id, apiv1.StateStarted, 20*time.Second)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.Etcd.ClientURL}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	junk := strings.Repeat("x", 1<<20)
	for i := 0; ; i++ {
		if _, err := cli.Put(ctx, fmt.Sprintf("/junk/%d", i), junk); err != nil {
			if !strings.Contains(err.Error(), "space exceeded") {
				t.Fatal(err)
			}
			break
		}
		if i > 200 {
			t.Fatal("etcd never reached its 32 MiB quota")
		}
	}
	// Lists work.
	if code, body := authCall(t, "GET", base+"/api/v1/vm", "", ""); code != 200 || !strings.Contains(body, ids[0]) {
		t.Fatalf("list at NOSPACE: HTTP %d %.200s", code, body)
	}
	// A start is refused with a 507 that says what to do.
	code, body := authCall(t, "POST", base+"/api/v1/vm", "", fmt.Sprintf(`{"vmid":%q}`, c.TemplateID))
	if code != http.StatusInsufficientStorage || !strings.Contains(body, "out of space") || !strings.Contains(body, "defragment") {
		t.Fatalf("start at NOSPACE: HTTP %d %s", code, body)
	}
	// A terminate works: the instance goes, and so does its VM.
	if err := c.Client.Terminate(ctx, ids[0]); err != nil {
		t.Fatalf("terminate at NOSPACE: %v", err)
	}
	if _, err := c.Client.Instance(ctx, ids[0]); err == nil {
		t.Errorf("the instance terminated at NOSPACE is still listed")
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(c.Nodes()[0].Agent.Running()) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the node still runs %v", c.Nodes()[0].Agent.Running())
		}
		time.Sleep(50 * time.Millisecond) // polling the node
	}
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), "corral_etcd_nospace_errors_total ") {
		t.Errorf("no corral_etcd_nospace_errors_total in /metrics")
	}
	// The operator's recovery: free space, compact, defragment, disarm.
	if _, err := cli.Delete(ctx, "/junk/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	st, err := cli.Status(ctx, c.Etcd.ClientURL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, st.Header.Revision); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Defragment(ctx, c.Etcd.ClientURL); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.AlarmDisarm(ctx, &clientv3.AlarmMember{MemberID: st.Header.MemberId, Alarm: pb.AlarmType_NOSPACE}); err != nil {
		t.Fatal(err)
	}
	more, err := c.Client.StartInstances(ctx, map[string]any{"vmid": c.TemplateID})
	if err != nil {
		t.Fatalf("start after recovery: %v", err)
	}
	c.WaitState(more[0], apiv1.StateStarted, 20*time.Second)
}
