package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/corral-build/corral/internal/controller"
	"github.com/corral-build/corral/internal/testenv"
)

// BenchmarkListInstances: GET /api/v1/vm of CORRAL_LIST_INSTANCES (10000)
// Started instances, in process: the service's list, then the whole HTTP
// answer.
func BenchmarkListInstances(b *testing.B) {
	n := envInt("CORRAL_LIST_INSTANCES", 10000)
	var nodes []testenv.NodeOptions
	for i := range 10 {
		nodes = append(nodes, testenv.NodeOptions{Name: fmt.Sprint("list-", i), Capacity: n/10 + 1})
	}
	c := testenv.StartCluster(b, testenv.Options{MaxWaiting: -1, Nodes: nodes})
	ctx := context.Background()
	for done := 0; done < n; done += 1000 {
		if _, err := c.Client.StartInstances(ctx, map[string]any{"vmid": c.TemplateID, "count": min(1000, n-done)}); err != nil {
			b.Fatal(err)
		}
	}
	svc := c.Controllers[0].Service
	for { // every instance Started, as in a busy cloud
		items, err := c.Client.Instances(ctx, "state=Started")
		if err == nil && len(items) == n {
			break
		}
		time.Sleep(time.Second)
	}
	b.ResetTimer()
	for range b.N {
		t := time.Now()
		items, err := svc.ListInstancesJSON(ctx, controller.InstanceFilter{})
		if err != nil {
			b.Fatal(err)
		}
		svcT := time.Since(t)
		t = time.Now()
		resp, err := http.Get(c.Controllers[0].URL + "/api/v1/vm")
		if err != nil {
			b.Fatal(err)
		}
		nb, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		fmt.Printf("list of %d: service %s, HTTP %s (%d bytes)\n", len(items), svcT, time.Since(t), nb)
	}
}
