package server

import (
	"strconv"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/internal/telemetry"
	"github.com/pilotlight/pilotlight/runtime/instance"
)

// metrics are the runtime's Prometheus series, labelled by function and revision.
type metrics struct {
	requests    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	batchRows   *prometheus.HistogramVec
	batchReqs   *prometheus.HistogramVec
	batchRun    *prometheus.HistogramVec
	batchErrors *prometheus.CounterVec
	loadSeconds *prometheus.GaugeVec
	provider    *prometheus.GaugeVec
	fallbacks   *prometheus.CounterVec
	sessions    *prometheus.GaugeVec
	reg         prometheus.Registerer
	// inUse is each loaded revision's pilotlight_session_pool_in_use
	// gauge, registered at load and unregistered at unload.
	inUse map[[2]string]prometheus.Collector
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		reg: reg, inUse: map[[2]string]prometheus.Collector{},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pilotlight_runtime_requests_total",
			Help: "Requests an instance answered, by function, revision, route (infer|function) and status code."}, []string{"function", "revision", "route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "pilotlight_runtime_request_duration_seconds",
			Help:    "Time an instance spent on a request, decode to encode.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}}, []string{"function", "revision", "route"}),
		batchRows: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "pilotlight_batch_size_rows",
			Help: "Rows in one ONNX Runtime call made by the dynamic batcher.", Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256}}, []string{"function", "revision"}),
		batchReqs: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "pilotlight_batch_requests",
			Help: "Requests coalesced into one ONNX Runtime call.", Buckets: []float64{1, 2, 4, 8, 16, 32, 64}}, []string{"function", "revision"}),
		batchRun: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "pilotlight_batch_run_seconds",
			Help: "ONNX Runtime time of one batch.", Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1}}, []string{"function", "revision"}),
		batchErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pilotlight_batch_errors_total",
			Help: "ONNX Runtime calls that failed."}, []string{"function", "revision"}),
		loadSeconds: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pilotlight_model_load_seconds",
			Help: "Time to create and warm the revision's session pool."}, []string{"function", "revision"}),
		provider: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pilotlight_execution_provider",
			Help: "1 for the execution provider the revision's sessions use (requested is what function.yaml asked for)."}, []string{"function", "revision", "provider", "requested"}),
		fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pilotlight_execution_provider_fallback_total",
			Help: "Sessions that fell back to CPU because the requested provider was unavailable."}, []string{"function", "revision", "from", "to"}),
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pilotlight_session_pool_size",
			Help: "Sessions in the revision's session pool."}, []string{"function", "revision"}),
	}
	reg.MustRegister(m.requests, m.duration, m.batchRows, m.batchReqs, m.batchRun, m.batchErrors, m.loadSeconds, m.provider, m.fallbacks, m.sessions)
	return m
}

// loaded records what loading a revision produced.
func (m *metrics) loaded(in *instance.Instance) {
	fn, rev := in.Manifest.Name, in.Revision.Name
	m.loadSeconds.WithLabelValues(fn, rev).Set(in.LoadTime.Seconds())
	m.provider.WithLabelValues(fn, rev, in.Pool.Provider, in.Manifest.Runtime.Provider).Set(1)
	if in.Pool.Fallback != "" {
		m.fallbacks.WithLabelValues(fn, rev, "cuda", in.Pool.Provider).Add(float64(in.Pool.Size()))
	}
	m.sessions.WithLabelValues(fn, rev).Set(float64(in.Pool.Size()))
	key := [2]string{fn, rev}
	if _, ok := m.inUse[key]; !ok {
		g := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "pilotlight_session_pool_in_use",
			Help: "Sessions running an ONNX Runtime call now.", ConstLabels: prometheus.Labels{"function": fn, "revision": rev}},
			func() float64 { return float64(in.Pool.InUse()) })
		m.inUse[key] = g
		m.reg.MustRegister(g)
	}
}

// unloaded records that a shared process released a revision's sessions:
// its pool gauges go (its counters stay, as counters do).
func (m *metrics) unloaded(in *instance.Instance) {
	fn, rev := in.Manifest.Name, in.Revision.Name
	m.sessions.WithLabelValues(fn, rev).Set(0)
	m.provider.DeleteLabelValues(fn, rev, in.Pool.Provider, in.Manifest.Runtime.Provider)
	key := [2]string{fn, rev}
	if g, ok := m.inUse[key]; ok {
		m.reg.Unregister(g)
		delete(m.inUse, key)
	}
}

type batchObserver struct {
	m       *metrics
	fn, rev string
}

func (o batchObserver) Batch(rows, requests int, run time.Duration, err error) {
	o.m.batchRows.WithLabelValues(o.fn, o.rev).Observe(float64(rows))
	o.m.batchReqs.WithLabelValues(o.fn, o.rev).Observe(float64(requests))
	o.m.batchRun.WithLabelValues(o.fn, o.rev).Observe(run.Seconds())
	if err != nil {
		o.m.batchErrors.WithLabelValues(o.fn, o.rev).Inc()
	}
}

func (m *metrics) observer(fn, rev string) instance.Observer {
	return batchObserver{m: m, fn: fn, rev: rev}
}

// measure counts a route's requests once the error handler has set the status.
func (s *Server) measure(route string) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			start := time.Now()
			if err := next(c); err != nil {
				c.Error(err)
			}
			fn, rev := "", ""
			in, _ := c.Get(instanceKey).(*instance.Instance)
			if in == nil {
				in = s.current(c.Request().Context())
			}
			if in != nil {
				fn, rev = in.Manifest.Name, in.Revision.Name
			}
			s.metrics.requests.WithLabelValues(fn, rev, route, strconv.Itoa(c.Response().Status)).Inc()
			telemetry.Observe(c.Request().Context(), s.metrics.duration.WithLabelValues(fn, rev, route), time.Since(start).Seconds())
			return nil
		}
	}
}
