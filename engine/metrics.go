package engine

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	instances        *prometheus.GaugeVec
	coldStarts       *prometheus.CounterVec
	coldStartSeconds *prometheus.HistogramVec
	queueDepth       *prometheus.GaugeVec
	desired          *prometheus.GaugeVec
	exits            *prometheus.CounterVec
	startFailures    *prometheus.CounterVec
	poolIdle         prometheus.Gauge
	loads, unloads   *prometheus.CounterVec
	specialisations  *prometheus.CounterVec
	preloads         *prometheus.CounterVec
	preloadedBytes   prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	fr := []string{"function", "revision"}
	m := &metrics{
		instances: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pilotlight_revision_instances",
			Help: "Instances of a revision by state (starting, ready, draining)."}, append(fr, "state")),
		coldStarts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pilotlight_cold_starts_total",
			Help: "Instances started, by source: pool (a pre-started generic process specialised), exec (a new process) or shared (a revision loaded into a shared process already running)."}, append(fr, "source")),
		coldStartSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "pilotlight_cold_start_duration_seconds",
			Help:    "From the arrival of the request that needed an instance (or the autoscaler's decision) to the instance being ready.",
			Buckets: []float64{.005, .01, .015, .02, .025, .035, .05, .075, .1, .15, .2, .25, .35, .5, .75, 1, 2.5, 5}}, append(fr, "source")),
		queueDepth: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pilotlight_activator_queue_depth",
			Help: "Requests held by the activator waiting for an instance."}, fr),
		desired: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pilotlight_autoscaler_desired_instances",
			Help: "The autoscaler's latest desired instance count."}, fr),
		exits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pilotlight_instance_exits_total",
			Help: "Instance processes that ended, by reason (stopped by the engine, or crashed)."}, append(fr, "reason")),
		startFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pilotlight_instance_start_failures_total",
			Help: "Instances that failed to become ready."}, fr),
		loads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pilotlight_revision_loads_total",
			Help: "Revisions loaded into a shared runtime process, by reason (scale_from_zero, scale_up, crash)."}, append(fr, "reason")),
		unloads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pilotlight_revision_unloads_total",
			Help: "Revisions unloaded from a shared runtime process (the process keeps running), by reason (scale_to_zero, scale_down, lru, crash, unreachable, load_failed, shutdown)."}, append(fr, "reason")),
		poolIdle: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pilotlight_warm_pool_idle_processes",
			Help: "Pre-started generic runtime processes waiting to be specialised (the pilot light)."}),
		specialisations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pilotlight_warm_pool_specialisations_total",
			Help: "Warm-pool processes specialised to a dedicated revision, by how they used a pre-load: hit (its sessions were pre-loaded), joined (their pre-load was running), dropped (another revision's pre-load was dropped first), none."}, append(fr, "preload")),
		preloads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pilotlight_warm_pool_preloads_total",
			Help: "Pre-loads of a revision's sessions into an idle warm-pool process, by outcome (loaded, skipped: no room in the machine's budget, failed)."}, append(fr, "outcome")),
		preloadedBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pilotlight_warm_pool_preloaded_bytes",
			Help: "What the idle warm-pool processes' pre-loaded sessions add to their RSS (charged to the machine's budget)."}),
	}
	reg.MustRegister(m.instances, m.coldStarts, m.coldStartSeconds, m.queueDepth, m.desired, m.exits, m.startFailures, m.poolIdle, m.loads, m.unloads,
		m.specialisations, m.preloads, m.preloadedBytes)
	return m
}

// Exit reasons (the reason label of pilotlight_instance_exits_total).
const (
	exitStopped = "stopped"
	exitCrashed = "crashed"
)

// known creates a revision's counters at 0 before anything happens to it.
// Alerts (increase(...start_failures_total[10m]) > 0, crashed exits) and
// the dashboard's increase() panels need the series before its first
// event: a counter that appears at 1 has no earlier sample, so increase()
// and rate() never see that first failure or cold start.
func (m *metrics) known(fn, rev string) {
	m.startFailures.WithLabelValues(fn, rev)
	for _, reason := range []string{exitStopped, exitCrashed} {
		m.exits.WithLabelValues(fn, rev, reason)
	}
	for _, reason := range []string{reasonScaleToZero, reasonLRU, reasonCrash} {
		m.unloads.WithLabelValues(fn, rev, reason)
	}
	for _, reason := range []string{reasonScaleFromZero, reasonCrash} {
		m.loads.WithLabelValues(fn, rev, reason)
	}
	for _, source := range []string{sourcePool, sourceExec, sourceShared} {
		m.coldStarts.WithLabelValues(fn, rev, source)
		m.coldStartSeconds.WithLabelValues(fn, rev, source)
	}
}
