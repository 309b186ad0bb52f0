package store_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/store"
	"github.com/corral-build/corral/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestStartupScriptIsStoredOnce: twelve starts of 1000 instances with 128
// KiB scripts filled etcd's 2 GiB quota (each record carried the script,
// and every update rewrote it). A start's script is now one key; the
// records name it and stay small; it goes when no instance names it.
func TestStartupScriptIsStoredOnce(t *testing.T) {
	for _, withView := range []bool{false, true} {
		t.Run(fmt.Sprint("view=", withView), func(t *testing.T) {
			ctx := context.Background()
			e := testenv.StartEtcd(t)
			cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.ClientURL}})
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			st := store.New(cli, "")
			if withView {
				vctx, cancel := context.WithCancel(ctx)
				defer cancel()
				st.EnableView(vctx)
			}
			script := []byte(strings.Repeat("echo build\n", 128<<10/11))
			var recs []store.InstanceRecord
			for i := range 300 {
				recs = append(recs, store.InstanceRecord{Instance: apiv1.Instance{InstanceID: fmt.Sprint("i", i), State: apiv1.StateScheduling,
					InflightReqID: "req-1"}, Spec: apiv1.StartSpec{StartupScript: script}})
			}
			if err := st.CreateInstances(ctx, recs); err != nil {
				t.Fatal(err)
			}
			resp, err := cli.Get(ctx, "/corral/", clientv3.WithPrefix())
			if err != nil {
				t.Fatal(err)
			}
			total := 0
			for _, kv := range resp.Kvs {
				total += len(kv.Value)
			}
			if total > 2*len(script)+300*4096 {
				t.Errorf("300 instances of one %d-byte script take %d bytes in etcd", len(script), total)
			}
			r, err := st.GetInstance(ctx, "i7")
			if err != nil || len(r.Spec.StartupScript) != 0 || r.Spec.ScriptRef != "req-1" {
				t.Fatalf("record: script %d bytes, ref %q, %v", len(r.Spec.StartupScript), r.Spec.ScriptRef, err)
			}
			got, err := st.Script(ctx, "req-1")
			if err != nil || string(got) != string(script) {
				t.Fatalf("stored script: %d bytes, %v", len(got), err)
			}
			// Named by an instance: kept.
			if n, err := st.PurgeScripts(ctx); err != nil || n != 0 {
				t.Fatalf("purge while instances name it: %d %v", n, err)
			}
			if _, err := cli.Delete(ctx, "/corral/instances/", clientv3.WithPrefix()); err != nil {
				t.Fatal(err)
			}
			if withView {
				// The view must have seen the deletes to know nobody names it.
				deadline := time.Now().Add(10 * time.Second)
				for n := 0; n == 0; time.Sleep(10 * time.Millisecond) { // polling the view
					if n, err = st.PurgeScripts(ctx); err != nil || time.Now().After(deadline) {
						t.Fatalf("purge of an orphaned script: %d %v", n, err)
					}
				}
			} else if n, err := st.PurgeScripts(ctx); err != nil || n != 1 {
				t.Fatalf("purge of an orphaned script: %d %v", n, err)
			}
			if _, err := st.Script(ctx, "req-1"); err != store.ErrNotFound {
				t.Errorf("script after its instances are gone: %v", err)
			}
		})
	}
}
