package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/driver/synthetic"
	"github.com/corral-build/corral/internal/node"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// BenchmarkScale is the control plane at fleet scale: CORRAL_SCALE_NODES
// node agents (1000; real internal/node agents over HTTP, in this process),
// CORRAL_SCALE_INSTANCES instance starts (10000) from CORRAL_SCALE_CLIENTS
// concurrent clients (50), a poller of the full list and one of ?id=,
// against CORRAL_SCALE_CONTROLLERS real `corral controller` processes (1;
// the first with embedded etcd, the others on it), so their CPU and memory
// are measured apart from the agents'.
func BenchmarkScale(b *testing.B) {
	nodes, total, clients := envInt("CORRAL_SCALE_NODES", 1000), envInt("CORRAL_SCALE_INSTANCES", 10000), envInt("CORRAL_SCALE_CLIENTS", 50)
	ctls := envInt("CORRAL_SCALE_CONTROLLERS", 1)
	for range b.N {
		runScale(b, nodes, total, clients, ctls)
	}
}

func freePort(b *testing.B) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// buildCorral builds the corral binary the benchmarks run as servers, or
// takes CORRAL_BENCH_CORRAL (an earlier build: A/B runs in one tree).
func buildCorral(b *testing.B, dir string) string {
	if bin := os.Getenv("CORRAL_BENCH_CORRAL"); bin != "" {
		return bin
	}
	bin := filepath.Join(dir, "corral")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/corral-build/corral/cmd/corral").CombinedOutput()
	if err != nil {
		b.Fatalf("build corral: %v\n%s", err, out)
	}
	return bin
}

type proc struct {
	cmd *exec.Cmd
	url string
}

// cpu is the process's user+system CPU time.
func (p proc) cpu() time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data)[strings.LastIndexByte(string(data), ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// peakRSS is the process's high-water resident set.
func (p proc) peakRSS() int64 {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// latencies collects one route's latencies.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) { l.mu.Lock(); l.d = append(l.d, d); l.mu.Unlock() }

func (l *latencies) pct(p float64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0
	}
	s := slices.Clone(l.d)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

func (l *latencies) n() int { l.mu.Lock(); defer l.mu.Unlock(); return len(l.d) }

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

func runScale(b *testing.B, nodes, total, clients, ctls int) {
	dir := benchDir(b)
	bin := buildCorral(b, dir)
	tmplFile := filepath.Join(dir, "templates.json")
	vmid := apiv1.NewID()
	data, _ := json.Marshal([]apiv1.TemplateDetail{{Template: apiv1.Template{ID: vmid, Name: "scale", Size: 1 << 30, Arch: runtime.GOARCH},
		Versions: []apiv1.TemplateVersion{{Tag: "v1", Number: 0, Size: 1 << 30, ConfigFile: "config.json", Images: []string{"disk.img"}}}}})
	if err := os.WriteFile(tmplFile, data, 0o644); err != nil {
		b.Fatal(err)
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", freePort(b))
	var procs []proc
	for i := range ctls {
		port := freePort(b)
		args := []string{"controller", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--data-dir", filepath.Join(dir, fmt.Sprint("ctl", i)),
			"--templates-file", tmplFile, "--join-token", "scale-token", "--node-lease-ttl", "30s",
			"--max-waiting-instances", "-1", "--instance-retention", "10m", "--log-level", "-1"}
		if i == 0 {
			args = append(args, "--etcd-client-url", etcdURL, "--etcd-peer-url", fmt.Sprintf("http://127.0.0.1:%d", freePort(b)))
		} else {
			args = append(args, "--etcd-endpoints", etcdURL)
		}
		cmd := exec.Command(bin, args...)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		p := proc{cmd, fmt.Sprintf("http://127.0.0.1:%d", port)}
		b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		deadline := time.Now().Add(30 * time.Second)
		for {
			resp, err := http.Get(p.url + "/readyz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					break
				}
			}
			if time.Now().After(deadline) {
				b.Fatalf("controller %d did not become ready", i)
			}
			time.Sleep(50 * time.Millisecond)
		}
		procs = append(procs, p)
	}
	var urls []string
	for _, p := range procs {
		urls = append(urls, p.url)
	}
	etcd, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdURL}, DialTimeout: 5 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	defer etcd.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The fleet: every agent in this process.
	capacity := (total+nodes-1)/nodes + 1
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var agentWG sync.WaitGroup
	joinStart := time.Now()
	var memBefore runtime.MemStats
	runtime.ReadMemStats(&memBefore)
	for i := range nodes {
		a, err := node.New(node.Config{ControllerURLs: urls, Token: "scale-token", Name: fmt.Sprintf("scale-%04d", i), IP: "127.0.0.1",
			Capacity: capacity, DataDir: filepath.Join(dir, "nodes", strconv.Itoa(i)), Driver: synthetic.New(20 * time.Millisecond), Log: quiet})
		if err != nil {
			b.Fatal(err)
		}
		agentWG.Add(1)
		go func() { defer agentWG.Done(); _ = a.Run(ctx) }()
	}
	cl, _ := client.New(urls, "")
	for {
		ns, err := cl.Nodes(ctx)
		active := 0
		for _, n := range ns {
			if n.State == apiv1.NodeActive {
				active++
			}
		}
		if err == nil && active == nodes {
			break
		}
		if time.Since(joinStart) > 5*time.Minute {
			b.Fatalf("%d of %d nodes active after 5 minutes", active, nodes)
		}
		time.Sleep(200 * time.Millisecond)
	}
	var memAfter runtime.MemStats
	runtime.ReadMemStats(&memAfter)
	fmt.Printf("scale: %d node agents joined in %s (%d slots each); agents cost %.0f KiB heap and %d goroutines each\n",
		nodes, time.Since(joinStart).Round(time.Millisecond), capacity,
		float64(memAfter.HeapAlloc-memBefore.HeapAlloc)/1024/float64(nodes), runtime.NumGoroutine()/nodes)

	// Idle: the fleet heartbeating and reporting, nothing to do; measured
	// over a whole report period after the one that follows the joins
	// (a node's first report after joining carries its first CPU sample).
	time.Sleep(15 * time.Second)
	idleCPU := make([]time.Duration, len(procs))
	for i, p := range procs {
		idleCPU[i] = p.cpu()
	}
	const idleFor = 15 * time.Second
	time.Sleep(idleFor)
	idleShare := make([]float64, len(procs)) // of a core
	for i, p := range procs {
		idleShare[i] = float64(p.cpu()-idleCPU[i]) / float64(idleFor)
		fmt.Printf("  controller %d idle with %d nodes: %.1f%% of a core\n", i, nodes, 100*idleShare[i])
	}

	hist0 := scrapeHistograms(procs[0].url)
	st0, err := etcd.Status(ctx, etcdURL)
	if err != nil {
		b.Fatal(err)
	}
	cpu0 := make([]time.Duration, len(procs))
	for i, p := range procs {
		cpu0[i] = p.cpu()
	}

	// The burst, and the pollers.
	var postLat, getLat, listLat latencies
	posted := make(map[string]time.Time, total)
	var postedMu sync.Mutex
	var ids []string
	var next atomic.Int64
	burstStart := time.Now()
	var lastAccepted atomic.Int64
	var wg sync.WaitGroup
	for c := range clients {
		cc, _ := client.New(append(urls[c%len(urls):], urls[:c%len(urls)]...), "")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(total) {
				t := time.Now()
				got, err := cc.StartInstances(ctx, map[string]any{"vmid": vmid, "count": 1})
				if err != nil {
					b.Errorf("start: %v", err)
					return
				}
				now := time.Now()
				postLat.add(now.Sub(t))
				lastAccepted.Store(now.UnixNano())
				postedMu.Lock()
				posted[got[0]] = now
				ids = append(ids, got[0])
				postedMu.Unlock()
			}
		}()
	}
	placed := map[string]time.Time{}
	started := map[string]time.Time{}
	pollDone := make(chan struct{})
	go func() { // GET ?id= of random instances
		for i := 0; ; i++ {
			select {
			case <-pollDone:
				return
			default:
			}
			postedMu.Lock()
			var id string
			if len(ids) > 0 {
				id = ids[(i*7919)%len(ids)]
			}
			postedMu.Unlock()
			if id == "" {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			t := time.Now()
			if _, err := cl.Instance(ctx, id); err == nil {
				getLat.add(time.Since(t))
			}
		}
	}()
	var lastList []apiv1.InstanceListItem
	var decodeLat latencies
	for {
		t := time.Now()
		body, err := getList(ctx, urls[0])
		if err != nil {
			b.Fatal(err)
		}
		seen := time.Now()
		listLat.add(seen.Sub(t))
		items, err := decodeList(body)
		if err != nil {
			b.Fatal(err)
		}
		decodeLat.add(time.Since(seen))
		lastList = items
		for _, it := range items {
			if it.VM.NodeID != "" {
				if _, ok := placed[it.InstanceID]; !ok {
					placed[it.InstanceID] = seen
				}
			}
			if it.VM.State == apiv1.StateStarted {
				if _, ok := started[it.InstanceID]; !ok {
					started[it.InstanceID] = seen
				}
			}
		}
		if len(started) >= total {
			break
		}
		if time.Since(burstStart) > 15*time.Minute {
			b.Fatalf("after 15 minutes: %d placed, %d started of %d", len(placed), len(started), total)
		}
	}
	close(pollDone)
	wg.Wait()
	allStarted := time.Now()
	accepted := time.Unix(0, lastAccepted.Load())
	var lastPlaced time.Time
	var toStarted latencies
	for id, at := range started {
		toStarted.add(at.Sub(posted[id]))
		lastPlaced = maxTime(lastPlaced, placed[id])
	}
	st1, _ := etcd.Status(ctx, etcdURL)
	fmt.Printf("  %d starts from %d clients on %d controller(s): accepted %.0f/s; placements %.0f/s; all Started %s after the last accepted POST (%s after the first)\n",
		total, clients, ctls, float64(total)/accepted.Sub(burstStart).Seconds(), float64(total)/lastPlaced.Sub(burstStart).Seconds(),
		allStarted.Sub(accepted).Round(time.Millisecond), allStarted.Sub(burstStart).Round(time.Millisecond))
	fmt.Printf("  POST->Started p50 %s p99 %s (seen by the list poller: resolution one list, p50 %s)\n", ms(toStarted.pct(0.5)), ms(toStarted.pct(0.99)), ms(listLat.pct(0.5)))
	fmt.Printf("  API: POST /api/v1/vm p50 %s p99 %s (%d); GET ?id= p50 %s p99 %s (%d); GET list of %d p50 %s p99 %s (%d; to the last byte, the poller's decode of it after: p50 %s p99 %s)\n",
		ms(postLat.pct(0.5)), ms(postLat.pct(0.99)), postLat.n(), ms(getLat.pct(0.5)), ms(getLat.pct(0.99)), getLat.n(),
		len(lastList), ms(listLat.pct(0.5)), ms(listLat.pct(0.99)), listLat.n(), ms(decodeLat.pct(0.5)), ms(decodeLat.pct(0.99)))
	hist1 := scrapeHistograms(procs[0].url)
	for _, route := range []string{`method="POST",route="POST /api/v1/vm"`, `method="GET",route="GET /api/v1/vm"`} {
		fmt.Printf("  controller's own time for %s in the burst (its histogram; what the clients see beyond it is their wait for the two cores): p50 <= %s, p99 <= %s\n",
			route, hist1.pct(hist0, route, 0.5), hist1.pct(hist0, route, 0.99))
	}
	burst := allStarted.Sub(burstStart)
	for i, p := range procs {
		fmt.Printf("  controller %d: %.1f CPU-s in the burst (%.0f%% of a core), peak RSS %.0f MiB\n", i,
			(p.cpu() - cpu0[i]).Seconds(), 100*float64(p.cpu()-cpu0[i])/float64(burst), float64(p.peakRSS())/(1<<20))
	}
	// The list alone at full size: latency and the controller's CPU per
	// list, once the burst's aftermath (the event log catching up) is done:
	// the controller back under twice its idle use over a second.
	idleRate := idleShare[0]
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); {
		c0 := procs[0].cpu()
		time.Sleep(time.Second) // a measurement window, not synchronisation
		if float64(procs[0].cpu()-c0)/float64(time.Second) < 2*idleRate+0.02 {
			break
		}
	}
	cpuL, listStart := procs[0].cpu(), time.Now()
	var quietList, quietDecode latencies
	for range 20 {
		t := time.Now()
		body, err := getList(ctx, urls[0])
		if err != nil {
			b.Fatal(err)
		}
		got := time.Now()
		quietList.add(got.Sub(t))
		if _, err := decodeList(body); err != nil {
			b.Fatal(err)
		}
		quietDecode.add(time.Since(got))
	}
	listCPU := procs[0].cpu() - cpuL
	listNet := listCPU - time.Duration(idleRate*float64(time.Since(listStart)))
	for _, line := range metricsLines(procs[0].url) {
		if strings.HasPrefix(line, "corral_store_reads_total") || strings.HasPrefix(line, "corral_scheduler_pass_duration_seconds_sum") || strings.HasPrefix(line, "corral_scheduler_pass_duration_seconds_count") || strings.HasPrefix(line, "corral_api_requests_total") && strings.Contains(line, "agent") {
			fmt.Printf("  %s\n", line)
		}
	}
	fmt.Printf("  GET list of %d alone: p50 %s p99 %s to the last byte (decoding it: p50 %s), %s controller CPU per list (%s above its idle use)\n", total,
		ms(quietList.pct(0.5)), ms(quietList.pct(0.99)), ms(quietDecode.pct(0.5)), ms(listCPU/20), ms(listNet/20))

	// Terminate everything: the rest of each lifecycle.
	var tw sync.WaitGroup
	var tnext atomic.Int64
	for range clients {
		tw.Add(1)
		go func() {
			defer tw.Done()
			for {
				i := int(tnext.Add(1)) - 1
				if i >= len(ids) {
					return
				}
				_ = cl.Terminate(ctx, ids[i])
			}
		}()
	}
	tw.Wait()
	for {
		items, err := cl.Instances(ctx, "state=Terminated")
		if err == nil && len(items) >= total {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	st2, _ := etcd.Status(ctx, etcdURL)
	fmt.Printf("  etcd: %.1f revisions per instance to Started, %.1f per whole lifecycle (start..Terminated); db %s, in use %s\n",
		float64(st1.Header.Revision-st0.Header.Revision)/float64(total), float64(st2.Header.Revision-st0.Header.Revision)/float64(total),
		mib(st2.DbSize), mib(st2.DbSizeInUse))
	cancel()
	agentWG.Wait()
	b.ReportMetric(float64(total)/lastPlaced.Sub(burstStart).Seconds(), "placements/s")
}

// metricsLines is a controller's /metrics, by line (none when it does not
// answer).
func metricsLines(base string) []string {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return strings.Split(string(body), "\n")
}

// histograms is corral_api_request_duration_seconds as scraped: cumulative
// counts by labels (method and route) and bucket bound.
type histograms map[string]map[float64]float64

func scrapeHistograms(base string) histograms {
	h := histograms{}
	for _, line := range metricsLines(base) {
		rest, ok := strings.CutPrefix(line, "corral_api_request_duration_seconds_bucket{")
		if !ok {
			continue
		}
		labels, value, _ := strings.Cut(rest, "} ")
		var kept []string
		le := math.NaN()
		for _, l := range strings.Split(labels, ",") {
			if v, ok := strings.CutPrefix(l, `le="`); ok {
				var err error
				if le, err = strconv.ParseFloat(strings.TrimSuffix(v, `"`), 64); err != nil { // "+Inf" parses
					le = math.NaN()
				}
				continue
			}
			kept = append(kept, l)
		}
		if math.IsNaN(le) {
			continue
		}
		n, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		key := strings.Join(kept, ",")
		if h[key] == nil {
			h[key] = map[float64]float64{}
		}
		h[key][le] = n
	}
	return h
}

// pct is the smallest bucket bound holding the p-th quantile of the
// requests between before and h.
func (h histograms) pct(before histograms, labels string, p float64) string {
	bounds := slices.Sorted(maps.Keys(h[labels]))
	if len(bounds) == 0 {
		return "?"
	}
	total := h[labels][math.Inf(1)] - before[labels][math.Inf(1)]
	for _, le := range bounds {
		if h[labels][le]-before[labels][le] >= p*total {
			if math.IsInf(le, 1) {
				return "+Inf"
			}
			return ms(time.Duration(le * float64(time.Second)))
		}
	}
	return "?"
}

// getList is GET /api/v1/vm read to its last byte: the API's latency,
// without the client's decoding (decodeList).
func getList(ctx context.Context, base string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/vm", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET /api/v1/vm: %s: %.200s", resp.Status, body)
	}
	return body, err
}

// decodeList decodes a GET /api/v1/vm answer as a client does.
func decodeList(body []byte) ([]apiv1.InstanceListItem, error) {
	var env struct {
		Status string                   `json:"status"`
		Body   []apiv1.InstanceListItem `json:"body"`
	}
	if err := json.Unmarshal(body, &env); err != nil || env.Status != "OK" {
		return nil, fmt.Errorf("GET /api/v1/vm: %q, %v", env.Status, err)
	}
	return env.Body, nil
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
