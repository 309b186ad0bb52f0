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
// are measured apart from the agents'. Then CORRAL_SCALE_PACED more starts
// (half as many) offered at CORRAL_SCALE_RATE a second (500), with
// CORRAL_SCALE_PACED_GETS reads of ?id= (100) and CORRAL_SCALE_PACED_LISTS
// of the list (2) a second, all open loop (runPaced).
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

func (l *latencies) mean() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var sum time.Duration
	for _, d := range l.d {
		sum += d
	}
	return sum / time.Duration(max(1, len(l.d)))
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
	rate, paced := envInt("CORRAL_SCALE_RATE", 500), envInt("CORRAL_SCALE_PACED", total/2)
	capacity := (total+paced+nodes-1)/nodes + 1
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
	var postLat, getLat latencies
	posted := make(map[string]time.Time, total)
	var postedMu sync.Mutex
	var ids []string
	var next atomic.Int64
	burstStart := time.Now()
	var lastAccepted atomic.Int64
	var wg sync.WaitGroup
	var ccs []*client.Controller
	for c := range clients {
		cc, _ := client.New(append(urls[c%len(urls):], urls[:c%len(urls)]...), "")
		ccs = append(ccs, cc)
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
	pollDone := make(chan struct{})
	go pollIDs(ctx, cl, &getLat, pollDone, 0, func(i int) string {
		postedMu.Lock()
		defer postedMu.Unlock()
		if len(ids) == 0 {
			return ""
		}
		return ids[(i*7919)%len(ids)]
	})
	lw := newListWatch()
	for len(lw.started) < total {
		if err := lw.poll(ctx, urls[0], time.Time{}); err != nil {
			b.Fatal(err)
		}
		if time.Since(burstStart) > 15*time.Minute {
			b.Fatalf("after 15 minutes: %d placed, %d started of %d", len(lw.placed), len(lw.started), total)
		}
	}
	placed, started, listLat, decodeLat := lw.placed, lw.started, &lw.lat, &lw.decode
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
	fmt.Printf("  closed loop: %d clients sending back to back at %.0f/s wait %s on average whatever the server does (Little's law: clients / throughput); measured mean %s\n",
		clients, float64(total)/accepted.Sub(burstStart).Seconds(), ms(time.Duration(float64(clients)*float64(accepted.Sub(burstStart))/float64(total))), ms(postLat.mean()))
	fmt.Printf("  API: POST /api/v1/vm p50 %s p99 %s (%d); GET ?id= p50 %s p99 %s (%d); GET list of %d p50 %s p99 %s (%d; to the last byte, the poller's decode of the fields it reads after: p50 %s p99 %s)\n",
		ms(postLat.pct(0.5)), ms(postLat.pct(0.99)), postLat.n(), ms(getLat.pct(0.5)), ms(getLat.pct(0.99)), getLat.n(),
		lw.last, ms(listLat.pct(0.5)), ms(listLat.pct(0.99)), listLat.n(), ms(decodeLat.pct(0.5)), ms(decodeLat.pct(0.99)))
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

	// Paced: the same starts offered at a fixed rate, open loop.
	if paced > 0 {
		ids = append(ids, runPaced(ctx, b, procs[0], ccs, cl, vmid, paced, rate,
			envInt("CORRAL_SCALE_PACED_GETS", 100), envInt("CORRAL_SCALE_PACED_LISTS", 2))...)
	}

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
		if err == nil && len(items) >= len(ids) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	st2, _ := etcd.Status(ctx, etcdURL)
	fmt.Printf("  etcd: %.1f revisions per instance to Started, %.1f per whole lifecycle (start..Terminated); db %s, in use %s\n",
		float64(st1.Header.Revision-st0.Header.Revision)/float64(total), float64(st2.Header.Revision-st0.Header.Revision)/float64(len(ids)),
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

// pollIDs reads one instance after another (GET ?id=; pick names the
// i-th, "" while there is none yet) until stop is closed: back to back, or
// (every > 0) one each interval on a fixed schedule, each in its own
// goroutine and timed from its scheduled time, as independent clients.
func pollIDs(ctx context.Context, cl *client.Controller, lat *latencies, stop <-chan struct{}, every time.Duration, pick func(i int) string) {
	start := time.Now()
	var wg sync.WaitGroup
	defer wg.Wait()
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		if every > 0 {
			t := start.Add(time.Duration(i) * every)
			time.Sleep(time.Until(t)) // the schedule (pacing)
			if id := pick(i); id != "" {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if _, err := cl.Instance(ctx, id); err == nil {
						lat.add(time.Since(t))
					}
				}()
			}
			continue
		}
		id := pick(i)
		if id == "" {
			time.Sleep(10 * time.Millisecond) // nothing to read yet
			continue
		}
		t := time.Now()
		if _, err := cl.Instance(ctx, id); err == nil {
			lat.add(time.Since(t))
		}
	}
}

// listWatch is the poller of the full list: when each instance was first
// seen placed and Started (its resolution is one list).
type listWatch struct {
	placed, started map[string]time.Time
	lat, decode     latencies // to the last byte; its decoding after
	last            int       // instances in the last list
}

func newListWatch() *listWatch {
	return &listWatch{placed: map[string]time.Time{}, started: map[string]time.Time{}}
}

// poll lists once, timed from t (its scheduled time; now when zero).
func (w *listWatch) poll(ctx context.Context, base string, t time.Time) error {
	if t.IsZero() {
		t = time.Now()
	}
	body, err := getList(ctx, base)
	if err != nil {
		return err
	}
	seen := time.Now()
	w.lat.add(seen.Sub(t))
	// Only the fields it reads: the benchmark's process shares the two
	// cores with the controller, so its own work is kept small.
	var env struct {
		Status string
		Body   []struct {
			InstanceID string `json:"instance_id"`
			VM         struct {
				NodeID string `json:"node_id"`
				State  string `json:"instance_state"`
			} `json:"vm"`
		}
	}
	if err := json.Unmarshal(body, &env); err != nil || env.Status != "OK" {
		return fmt.Errorf("GET /api/v1/vm: %q, %v", env.Status, err)
	}
	w.decode.add(time.Since(seen))
	w.last = len(env.Body)
	for _, it := range env.Body {
		if _, ok := w.placed[it.InstanceID]; !ok && it.VM.NodeID != "" {
			w.placed[it.InstanceID] = seen
		}
		if _, ok := w.started[it.InstanceID]; !ok && it.VM.State == apiv1.StateStarted {
			w.started[it.InstanceID] = seen
		}
	}
	return nil
}

// runPaced offers n starts at rate a second, open loop: each request is
// sent at its scheduled time whatever the answers before it, and its
// latency counts from that time (so a stalled server or a starved sender
// shows). The burst before is closed loop: its clients keep the machine
// saturated by design, and their mean wait is clients over throughput
// whatever the server does; this is the latency a CI system sees at a
// given rate, beside reads on fixed schedules too (getRate instances and
// listRate full lists a second, as dashboards and CI plugins poll). It
// returns the instances.
func runPaced(ctx context.Context, b *testing.B, ctl proc, ccs []*client.Controller, cl *client.Controller, vmid string, n, rate, getRate, listRate int) []string {
	var postLat, getLat, toStarted latencies
	var mu sync.Mutex
	sentAt := map[string]time.Time{}
	var ids []string
	hist0, cpu0 := scrapeHistograms(ctl.url), ctl.cpu()
	stop := make(chan struct{})
	go pollIDs(ctx, cl, &getLat, stop, time.Second/time.Duration(getRate), func(i int) string {
		mu.Lock()
		defer mu.Unlock()
		if len(ids) == 0 {
			return ""
		}
		return ids[(i*7919)%len(ids)]
	})
	start := time.Now()
	sent := make(chan struct{})
	var wg sync.WaitGroup
	var lastSent time.Time
	go func() {
		defer close(sent)
		for i := range n {
			at := start.Add(time.Duration(i) * time.Second / time.Duration(rate))
			time.Sleep(time.Until(at)) // the schedule (pacing), not a wait on a condition
			wg.Add(1)
			go func() {
				defer wg.Done()
				got, err := ccs[i%len(ccs)].StartInstances(ctx, map[string]any{"vmid": vmid, "count": 1})
				if err != nil {
					b.Errorf("paced start: %v", err)
					return
				}
				postLat.add(time.Since(at))
				mu.Lock()
				sentAt[got[0]] = at
				ids = append(ids, got[0])
				mu.Unlock()
			}()
		}
		lastSent = time.Now()
	}()
	lw := newListWatch()
	for i, done := 0, false; !done; i++ {
		at := start.Add(time.Duration(i) * time.Second / time.Duration(listRate))
		time.Sleep(time.Until(at)) // the schedule (pacing)
		if err := lw.poll(ctx, ctl.url, at); err != nil {
			b.Fatal(err)
		}
		select {
		case <-sent:
			wg.Wait()
			mu.Lock()
			done = true
			for _, id := range ids {
				if _, ok := lw.started[id]; !ok {
					done = false
				}
			}
			mu.Unlock()
		default:
		}
		if time.Since(start) > 10*time.Minute {
			b.Fatalf("paced: %d of %d started after 10 minutes", len(lw.started), n)
		}
	}
	close(stop)
	end := time.Now()
	for _, id := range ids {
		toStarted.add(lw.started[id].Sub(sentAt[id]))
	}
	hist1 := scrapeHistograms(ctl.url)
	fmt.Printf("  paced: %d starts offered at %d/s, GET ?id= at %d/s, the full list %d times a second (open loop; each request timed from its scheduled time), sent in %s, all Started %s after the last\n",
		n, rate, getRate, listRate, lastSent.Sub(start).Round(time.Millisecond), end.Sub(lastSent).Round(time.Millisecond))
	fmt.Printf("  paced API: POST p50 %s p99 %s (%d); GET ?id= p50 %s p99 %s (%d); GET list of %d p50 %s p99 %s (%d, to the last byte; the poller's decode of the fields it reads: p50 %s); POST->Started p50 %s p99 %s (resolution one list interval)\n",
		ms(postLat.pct(0.5)), ms(postLat.pct(0.99)), postLat.n(), ms(getLat.pct(0.5)), ms(getLat.pct(0.99)), getLat.n(),
		lw.last, ms(lw.lat.pct(0.5)), ms(lw.lat.pct(0.99)), lw.lat.n(), ms(lw.decode.pct(0.5)), ms(toStarted.pct(0.5)), ms(toStarted.pct(0.99)))
	for _, route := range []string{`method="POST",route="POST /api/v1/vm"`, `method="GET",route="GET /api/v1/vm"`} {
		fmt.Printf("  paced, controller's own time for %s: p50 <= %s, p99 <= %s\n", route, hist1.pct(hist0, route, 0.5), hist1.pct(hist0, route, 0.99))
	}
	fmt.Printf("  paced: controller 0 used %.0f%% of a core\n", 100*float64(ctl.cpu()-cpu0)/float64(end.Sub(start)))
	return ids
}
