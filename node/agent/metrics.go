package agent

import (
	"errors"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

type metrics struct {
	reg              *prometheus.Registry
	peersUp          prometheus.GaugeFunc
	routes           prometheus.Gauge
	reconciles       prometheus.Counter
	errors           prometheus.Counter
	resyncs          prometheus.Counter
	reconcileSeconds prometheus.Histogram
}

// newMetrics registers the daemon's metrics; peersUp is read at scrape time,
// since sessions change without any reconcile.
func newMetrics(peersUp func() float64) *metrics {
	m := &metrics{
		reg:              prometheus.NewRegistry(),
		peersUp:          prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tabby_bgp_peers_established", Help: "BGP sessions in state Established."}, peersUp),
		routes:           prometheus.NewGauge(prometheus.GaugeOpts{Name: "tabby_routes_programmed", Help: "Routes to other hosts' blocks in the kernel."}),
		reconciles:       prometheus.NewCounter(prometheus.CounterOpts{Name: "tabby_reconciles_total", Help: "Reconcile passes."}),
		errors:           prometheus.NewCounter(prometheus.CounterOpts{Name: "tabby_reconcile_errors_total", Help: "Reconcile steps that failed."}),
		resyncs:          prometheus.NewCounter(prometheus.CounterOpts{Name: "tabby_etcd_resyncs_total", Help: "Full reads of a watched etcd prefix (start, lost watch)."}),
		reconcileSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tabby_reconcile_duration_seconds", Help: "Time of one reconcile pass.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
	}
	m.reg.MustRegister(m.peersUp, m.routes, m.reconciles, m.errors, m.resyncs, m.reconcileSeconds,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) serve(addr string) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			_ = err
		}
	}()
	return func() { srv.Close() }, nil
}
