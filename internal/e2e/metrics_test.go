package e2e

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/controller/daemon"
	regdaemon "github.com/corral-build/corral/internal/registry/daemon"
	"github.com/corral-build/corral/internal/testenv"
)

// TestMetrics scrapes /metrics after real traffic and checks the series an
// operator graphs.
func TestMetrics(t *testing.T) {
	c := testenv.StartCluster(t, testenv.Options{Nodes: []testenv.NodeOptions{{Name: "n1", Capacity: 2}}})
	base := c.Controllers[0].URL
	ok(t, "POST", base+"/api/v1/vm", `{"vmid":"`+c.TemplateID+`","count":3}`) // capacity 2: one waits
	deadline := time.Now().Add(10 * time.Second)
	for len(ok(t, "GET", base+"/api/v1/vm?state=Started", "").([]any)) != 2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	fail(t, "GET", base+"/api/v1/vm?id=nope", "", 200, apiv1.MsgNotFound)

	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(body)
	value := func(series string) float64 {
		t.Helper()
		m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` ([0-9.e+]+)$`).FindStringSubmatch(text)
		if m == nil {
			t.Fatalf("no series %s in /metrics", series)
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		return v
	}
	if v := value(`corral_instances{state="Started"}`); v != 2 {
		t.Errorf("Started instances %v", v)
	}
	if v := value(`corral_instances{state="Scheduling"}`); v != 1 {
		t.Errorf("Scheduling instances %v", v)
	}
	if v := value(`corral_nodes{state="Active"}`); v != 1 {
		t.Errorf("Active nodes %v", v)
	}
	if v := value(`corral_api_requests_total{code="200",method="POST",route="POST /api/v1/vm"}`); v != 1 {
		t.Errorf("POST /api/v1/vm requests %v", v)
	}
	if v := value(`corral_scheduling_latency_seconds_count`); v < 2 {
		t.Errorf("placements observed %v", v)
	}
	if v := value(`corral_etcd_db_total_size_in_bytes{endpoint="` + c.Etcd.ClientURL + `"}`); v <= 0 {
		t.Errorf("etcd db size %v", v)
	}
	value(`corral_etcd_db_total_size_in_use_in_bytes{endpoint="` + c.Etcd.ClientURL + `"}`)
	if !strings.Contains(text, "corral_scheduler_pass_duration_seconds_bucket") {
		t.Error("no scheduler pass histogram")
	}
}

// TestMetricsListeners: the registry serves its own series on its API port;
// with --enable-metrics (ANKA_ENABLE_METRICS) controller and registry also
// serve /metrics on a separate address, as Prometheus setups for :2112 expect.
func TestMetricsListeners(t *testing.T) {
	scrape := func(url string) string {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return string(body)
	}
	regMetrics := strings.TrimPrefix(freeURL(t), "http://")
	reg, err := regdaemon.Start(regdaemon.Config{ListenAddr: "127.0.0.1:0", DataDir: t.TempDir(), MetricsListen: regMetrics,
		GCInterval: 100 * time.Millisecond, Log: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	http.Get(reg.URL + "/registry/status")
	// The GC counter is exported at 0 from the start: wait until it counts
	// real runs (every 100 ms here).
	for deadline := time.Now().Add(10 * time.Second); metricValue(scrape(reg.URL+"/metrics"), "corral_registry_gc_runs_total") < 2; {
		if time.Now().After(deadline) {
			t.Fatal("corral_registry_gc_runs_total never counted two GC runs")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, url := range []string{reg.URL + "/metrics", "http://" + regMetrics + "/metrics"} {
		text := scrape(url)
		if !strings.Contains(text, `corral_registry_requests_total{code="200",method="GET",route="GET /registry/status"} 1`) {
			t.Errorf("%s: no status request counted", url)
		}
		if free := metricValue(text, "corral_registry_store_free_bytes"); free <= 0 {
			t.Errorf("%s: corral_registry_store_free_bytes %v, want the volume's free space", url, free)
		}
		if runs := metricValue(text, "corral_registry_gc_runs_total"); runs < 2 {
			t.Errorf("%s: corral_registry_gc_runs_total %v, want >= 2", url, runs)
		}
	}

	e := testenv.StartEtcd(t)
	ctlMetrics := strings.TrimPrefix(freeURL(t), "http://")
	ctl, err := daemon.Start(context.Background(), daemon.Config{ListenAddr: "127.0.0.1:0", EtcdEndpoints: []string{e.ClientURL},
		RegistryURL: reg.URL, JoinToken: "t", MetricsListen: ctlMetrics, EtcdLogLevel: "off", Log: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	http.Get(ctl.URL + "/api/v1/status")
	if text := scrape("http://" + ctlMetrics + "/metrics"); !strings.Contains(text, `corral_api_requests_total{code="200",method="GET",route="GET /api/v1/status"} 1`) ||
		!strings.Contains(text, `corral_nodes{state="Active"} 0`) {
		t.Errorf("controller metrics listener:\n%.2000s", text)
	}
}

// metricValue is the value of an unlabelled series in a Prometheus text
// exposition, or -1 when absent.
func metricValue(text, name string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}
