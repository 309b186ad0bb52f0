// Package metrics exports the controller's Prometheus metrics: API traffic,
// instances and nodes by state, scheduling latency, and etcd's database size
// (for embedded and external etcd alike).
package metrics

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	apiv1 "github.com/corral-build/corral/api/v1"
	"github.com/corral-build/corral/internal/httpserve"
	"github.com/corral-build/corral/internal/store"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds the controller's instruments.
type Metrics struct {
	*HTTP
	reg          *prometheus.Registry
	passSeconds  prometheus.Histogram
	placeSeconds prometheus.Histogram
}

// New registers the instruments; st feeds the state gauges at scrape time.
func New(st *store.Store) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		passSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "corral_scheduler_pass_duration_seconds", Help: "Duration of one scheduling pass.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
		}),
		placeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "corral_scheduling_latency_seconds", Help: "From an instance's creation to its placement on a node.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2.5, 14),
		}),
	}
	m.HTTP = NewHTTP(m.reg, "corral_api")
	// Go and process metrics come from the default registry (see Handler).
	m.reg.MustRegister(m.passSeconds, m.placeSeconds, stateCollector{st})
	return m
}

// Handler serves /metrics: Corral's registry plus the default one, where an
// embedded etcd registers its own etcd_* metrics.
func (m *Metrics) Handler() http.Handler { return handler(m.reg) }

// Listen serves h as GET /metrics on its own address (ANKA_ENABLE_METRICS's
// :2112); "" serves nothing and returns nil.
func Listen(addr string, h http.Handler) (*http.Server, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	srv := httpserve.Timeouts{}.Server(mux)
	go srv.Serve(ln)
	return srv, nil
}

func handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(prometheus.Gatherers{reg, prometheus.DefaultGatherer}, promhttp.HandlerOpts{})
}

// ObservePass records a scheduling pass.
func (m *Metrics) ObservePass(d time.Duration) { m.passSeconds.Observe(d.Seconds()) }

// ObservePlacement records how long an instance waited for a node.
func (m *Metrics) ObservePlacement(d time.Duration) { m.placeSeconds.Observe(d.Seconds()) }

// HTTP counts a server's requests and their latency by route pattern
// (bounded cardinality).
type HTTP struct {
	requests *prometheus.CounterVec
	seconds  *prometheus.HistogramVec
}

// NewHTTP registers <prefix>_requests_total and <prefix>_request_duration_seconds.
func NewHTTP(reg prometheus.Registerer, prefix string) *HTTP {
	h := &HTTP{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: prefix + "_requests_total", Help: "Requests by method, route and HTTP code.",
		}, []string{"method", "route", "code"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: prefix + "_request_duration_seconds", Help: "Latency by method and route.",
			// Prometheus' default bounds and two below them: round figures
			// an objective is stated in (50 ms, 200 ms) fall on or near one.
			Buckets: append([]float64{.001, .0025}, prometheus.DefBuckets...),
		}, []string{"method", "route"}),
	}
	reg.MustRegister(h.requests, h.seconds)
	return h
}

// Middleware instruments next, a ServeMux (its matched pattern is the route).
func (h *HTTP) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := httpserve.NewRecorder(w)
		next.ServeHTTP(rec, r)
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		h.requests.WithLabelValues(r.Method, route, strconv.Itoa(rec.Status())).Inc()
		h.seconds.WithLabelValues(r.Method, route).Observe(time.Since(start).Seconds())
	})
}

// stateCollector reads instances, nodes and etcd's size at scrape time, so
// nothing is written to etcd for metrics.
type stateCollector struct{ st *store.Store }

var (
	instancesDesc = prometheus.NewDesc("corral_instances", "Instances by state.", []string{"state"}, nil)
	nodesDesc     = prometheus.NewDesc("corral_nodes", "Nodes by state.", []string{"state"}, nil)
	dbSizeDesc    = prometheus.NewDesc("corral_etcd_db_total_size_in_bytes", "etcd backend database size (as etcd_mvcc_db_total_size_in_bytes).", []string{"endpoint"}, nil)
	dbInUseDesc   = prometheus.NewDesc("corral_etcd_db_total_size_in_use_in_bytes", "etcd backend database bytes in use (as etcd_mvcc_db_total_size_in_use_in_bytes).", []string{"endpoint"}, nil)
)

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- instancesDesc
	ch <- nodesDesc
	ch <- dbSizeDesc
	ch <- dbInUseDesc
	ch <- viewReadsDesc
	ch <- viewListsDesc
}

var viewListsDesc = prometheus.NewDesc("corral_store_view_lists_total",
	"Full reads of etcd by the watch-fed view: one at start, then one each time its watch could not resume (a compacted revision); a rising count means the view keeps falling behind.",
	nil, nil)

var viewReadsDesc = prometheus.NewDesc("corral_store_reads_total",
	"Reads of instances, nodes and groups, by what served them: the watch-fed view, or etcd (the view not synced or behind).",
	[]string{"served_by"}, nil)

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if snap, err := c.st.Snapshot(ctx); err == nil {
		byState := map[string]int{}
		for _, s := range apiv1.InstanceStates {
			byState[s] = 0
		}
		for _, in := range snap.Instances {
			byState[in.State]++
		}
		for s, n := range byState {
			ch <- prometheus.MustNewConstMetric(instancesDesc, prometheus.GaugeValue, float64(n), s)
		}
		nodes := map[string]int{apiv1.NodeActive: 0, apiv1.NodeOffline: 0, apiv1.NodeDrain: 0}
		for _, n := range snap.Nodes {
			nodes[n.State()]++
		}
		for s, n := range nodes {
			ch <- prometheus.MustNewConstMetric(nodesDesc, prometheus.GaugeValue, float64(n), s)
		}
	}
	hits, misses := c.st.ViewReads()
	ch <- prometheus.MustNewConstMetric(viewReadsDesc, prometheus.CounterValue, float64(hits), "view")
	ch <- prometheus.MustNewConstMetric(viewReadsDesc, prometheus.CounterValue, float64(misses), "etcd")
	ch <- prometheus.MustNewConstMetric(viewListsDesc, prometheus.CounterValue, float64(c.st.ViewLists()))
	cli := c.st.Client()
	for _, ep := range cli.Endpoints() {
		if st, err := cli.Status(ctx, ep); err == nil {
			ch <- prometheus.MustNewConstMetric(dbSizeDesc, prometheus.GaugeValue, float64(st.DbSize), ep)
			ch <- prometheus.MustNewConstMetric(dbInUseDesc, prometheus.GaugeValue, float64(st.DbSizeInUse), ep)
		}
	}
}
