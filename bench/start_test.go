package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/driver/qemu"
	"github.com/corral-build/corral/internal/driver/qemu/qemutest"
	"github.com/corral-build/corral/internal/testenv"
)

// startLatency posts a start request and waits for Started.
func startLatency(b *testing.B, c *testenv.Cluster, vmid string) time.Duration {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	ids, err := c.Client.StartInstances(ctx, map[string]any{"vmid": vmid})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := c.Client.WaitState(ctx, ids[0], apiv1.StateStarted); err != nil {
		b.Fatal(err)
	}
	d := time.Since(start)
	if err := c.Client.Terminate(ctx, ids[0]); err != nil {
		b.Fatal(err)
	}
	return d
}

// BenchmarkStartLatency prints request -> Started for the synthetic driver
// (control-plane overhead alone) and the qemu driver (cold: includes the
// template pull; warm: template already on the node).
func BenchmarkStartLatency(b *testing.B) {
	for range b.N {
		c := testenv.StartCluster(b, testenv.Options{Nodes: []testenv.NodeOptions{{Name: "syn", Capacity: 4}}})
		var total time.Duration
		const runs = 10
		for range runs {
			total += startLatency(b, c, c.TemplateID)
		}
		synthetic := total / runs
		fmt.Printf("instance start latency, request -> Started:\n  synthetic (20 ms boot)  %8s  (mean of %d)\n", synthetic.Round(time.Millisecond), runs)
		b.ReportMetric(float64(synthetic.Milliseconds()), "synthetic_ms")

		img := qemutest.Image(b)
		drv, err := qemu.New(qemu.Config{StateDir: b.TempDir(), ForwardHost: "127.0.0.1",
			Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			b.Fatal(err)
		}
		q := testenv.StartCluster(b, testenv.Options{Registry: true, Nodes: []testenv.NodeOptions{{Name: "qemu", Capacity: 2, Driver: drv}}})
		rc, _ := client.NewRegistry(q.Registry.URL)
		res, err := rc.Push(context.Background(), client.PushOptions{Source: img, Template: "tiny", Tag: "v1"})
		if err != nil {
			b.Fatal(err)
		}
		cold := startLatency(b, q, res.TemplateID)
		warm := startLatency(b, q, res.TemplateID)
		fmt.Printf("  qemu %s, cold (pull)   %8s\n  qemu %s, warm          %8s  (%.0fx synthetic)\n",
			drv.Accelerator(), cold.Round(time.Millisecond), drv.Accelerator(), warm.Round(time.Millisecond),
			float64(warm)/float64(synthetic))
		b.ReportMetric(float64(warm.Milliseconds()), "qemu_warm_ms")
	}
}
