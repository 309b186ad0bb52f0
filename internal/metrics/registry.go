package metrics

import (
	"context"
	"net/http"
	"time"

	"github.com/corral-build/corral/internal/registry"
	"github.com/prometheus/client_golang/prometheus"
)

// Registry holds a registry process's instruments: HTTP traffic, garbage
// collection, and the store's size.
type Registry struct {
	*HTTP
	reg       *prometheus.Registry
	gcRuns    prometheus.Counter
	gcFreed   prometheus.Counter
	gcDeleted prometheus.Counter
}

// NewRegistry registers the instruments; r's store is measured at scrape time.
func NewRegistry(r *registry.Registry) *Registry {
	m := &Registry{
		reg:       prometheus.NewRegistry(),
		gcRuns:    prometheus.NewCounter(prometheus.CounterOpts{Name: "corral_registry_gc_runs_total", Help: "Garbage collection runs."}),
		gcFreed:   prometheus.NewCounter(prometheus.CounterOpts{Name: "corral_registry_gc_freed_bytes_total", Help: "Bytes of chunks deleted by garbage collection."}),
		gcDeleted: prometheus.NewCounter(prometheus.CounterOpts{Name: "corral_registry_gc_deleted_chunks_total", Help: "Chunks deleted by garbage collection."}),
	}
	m.HTTP = NewHTTP(m.reg, "corral_registry")
	m.reg.MustRegister(m.gcRuns, m.gcFreed, m.gcDeleted, storeCollector{r})
	return m
}

// Handler serves /metrics.
func (m *Registry) Handler() http.Handler { return handler(m.reg) }

// ObserveGC records a garbage collection run.
func (m *Registry) ObserveGC(s registry.GCStats) {
	m.gcRuns.Inc()
	m.gcFreed.Add(float64(s.BytesFreed))
	m.gcDeleted.Add(float64(s.Deleted))
}

type storeCollector struct{ r *registry.Registry }

var (
	storeTotalDesc = prometheus.NewDesc("corral_registry_store_total_bytes", "Size of the registry's volume (0 for object storage).", nil, nil)
	storeFreeDesc  = prometheus.NewDesc("corral_registry_store_free_bytes", "Free bytes on the registry's volume (0 for object storage).", nil, nil)
)

func (c storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- storeTotalDesc
	ch <- storeFreeDesc
}

func (c storeCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if total, free, err := c.r.Backend().Usage(ctx); err == nil {
		ch <- prometheus.MustNewConstMetric(storeTotalDesc, prometheus.GaugeValue, float64(total))
		ch <- prometheus.MustNewConstMetric(storeFreeDesc, prometheus.GaugeValue, float64(free))
	}
}
