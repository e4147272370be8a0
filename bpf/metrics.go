package bpf

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	descEnabled = prometheus.NewDesc("pilotlight_bpf_enabled",
		"1 when the eBPF probes are loaded and attached, 0 when they are disabled (the log says why).", nil, nil)
	descLost = prometheus.NewDesc("pilotlight_bpf_lost_events_total",
		"Kernel events dropped: ring buffer full, timeline or port map full, or undecodable.", nil, nil)
	descTracked = prometheus.NewDesc("pilotlight_bpf_tracked_instances",
		"Instance processes whose per-request kernel latency is being measured.", nil, nil)
	descRunq = prometheus.NewDesc("pilotlight_bpf_runqueue_delay_seconds",
		"Time an instance's threads waited in the run queue between wakeup (or preemption) and running.",
		[]string{"function", "revision"}, nil)
	descSockq = prometheus.NewDesc("pilotlight_bpf_socket_receive_queue_seconds",
		"Time request bytes waited in an instance's socket receive queue between arriving and being read; only with the socket-queue option.",
		[]string{"function", "revision"}, nil)
	descSyscall = prometheus.NewDesc("pilotlight_bpf_network_syscall_seconds",
		"Time an instance spent inside network syscalls (accept, read/write on sockets, send*/recv*, connect); only with the syscall-latency option.",
		[]string{"function", "revision"}, nil)
	descProgRuntime = prometheus.NewDesc("pilotlight_bpf_program_run_seconds_total",
		"CPU time spent in each eBPF program; grows only while the kernel's BPF statistics are enabled (BPF_ENABLE_STATS or sysctl kernel.bpf_stats_enabled).",
		[]string{"program"}, nil)
	descProgRuns = prometheus.NewDesc("pilotlight_bpf_program_runs_total",
		"Times each eBPF program ran; grows only while the kernel's BPF statistics are enabled.",
		[]string{"program"}, nil)
)

// newMetrics creates the cold-start anatomy and connection metrics.
func (p *Probes) newMetrics() {
	p.coldStartTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "pilotlight_bpf_cold_start_time_seconds",
		Help:    "Each cold-start phase's wall time split by state: oncpu (some thread on a CPU), runqueue (some waiting for one), faults (some blocked in a page fault), blocked (all blocked); observed once per cold start.",
		Buckets: prometheus.ExponentialBucketsRange(0.0001, 30, 22),
	}, []string{"function", "revision", "phase", "state"})
	p.coldMajFaults = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pilotlight_bpf_cold_start_major_faults_total",
		Help: "Major page faults of instances during their cold-start phases.",
	}, []string{"function", "revision", "phase"})
	p.coldModelBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pilotlight_bpf_cold_start_model_read_bytes_total",
		Help: "Bytes instances read(2) from files named *.onnx during their cold-start phases.",
	}, []string{"function", "revision", "phase"})
	p.connections = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pilotlight_bpf_connections_total",
		Help: "TCP connections of instances, by direction (inbound, outbound) and peer class (router, loopback, dns, other).",
	}, []string{"function", "revision", "direction", "peer_class"})
	p.connBytes = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "pilotlight_bpf_connection_bytes",
		Help:    "Bytes per closed TCP connection of an instance (flow: received, sent as acknowledged by the peer), as bcc's tcplife reports them.",
		Buckets: prometheus.ExponentialBuckets(64, 8, 9),
	}, []string{"function", "revision", "direction", "peer_class", "flow"})
	p.unexpectedConn = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pilotlight_bpf_unexpected_connections_total",
		Help: "Outbound TCP connections instances opened to anything but DNS (each also logged with pid and peer).",
	}, []string{"function", "revision"})
}

// vecs are the probes' metric vectors, for Describe and Collect.
func (p *Probes) vecs() []prometheus.Collector {
	return []prometheus.Collector{p.coldStart, p.coldStartTime, p.coldMajFaults, p.coldModelBytes, p.connections, p.connBytes, p.unexpectedConn}
}

var kindDescs = [histKinds]*prometheus.Desc{kindRunq: descRunq, kindSockq: descSockq, kindSyscall: descSyscall}

// collector exports the probes' metrics. Kernel histograms are read on
// every scrape, so they are as fresh as the scrape.
type collector struct{ p *Probes }

func newCollector(p *Probes) *collector { return &collector{p: p} }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descEnabled
	ch <- descLost
	ch <- descTracked
	for _, d := range kindDescs {
		ch <- d
	}
	ch <- descProgRuntime
	ch <- descProgRuns
	for _, v := range c.p.vecs() {
		v.Describe(ch)
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	p := c.p
	p.mu.Lock()
	p.readHistograms()
	var lost uint64
	if !p.closed {
		var zero uint32
		_ = p.lost.Lookup(zero, &lost)
	}
	lost += p.userLost
	tracked := len(p.instances)
	type progStat struct {
		name    string
		runtime time.Duration
		runs    uint64
	}
	var stats []progStat
	if !p.closed {
		for name, prog := range p.coll.Programs {
			if st, err := prog.Stats(); err == nil {
				stats = append(stats, progStat{name, st.Runtime, st.RunCount})
			}
		}
	}
	type row struct {
		labels
		h slotHists
	}
	rows := make([]row, 0, len(p.totals))
	for l, h := range p.totals {
		rows = append(rows, row{l, *h})
	}
	p.mu.Unlock()

	ch <- prometheus.MustNewConstMetric(descEnabled, prometheus.GaugeValue, 1)
	ch <- prometheus.MustNewConstMetric(descLost, prometheus.CounterValue, float64(lost))
	ch <- prometheus.MustNewConstMetric(descTracked, prometheus.GaugeValue, float64(tracked))
	for _, r := range rows {
		for k, d := range kindDescs {
			if (k == kindSyscall && !p.syscallLatency) || (k == kindSockq && !p.socketQueue) {
				continue
			}
			count, sum, buckets := r.h[k].promBuckets()
			ch <- prometheus.MustNewConstHistogram(d, count, sum, buckets, r.function, r.revision)
		}
	}
	for _, s := range stats {
		ch <- prometheus.MustNewConstMetric(descProgRuntime, prometheus.CounterValue, s.runtime.Seconds(), s.name)
		ch <- prometheus.MustNewConstMetric(descProgRuns, prometheus.CounterValue, float64(s.runs), s.name)
	}
	for _, v := range p.vecs() {
		v.Collect(ch)
	}
}

// Disabled registers pilotlight_bpf_enabled 0 on reg, for a platform that
// runs without probes (New failed: log its error, which says why).
func Disabled(reg prometheus.Registerer) error {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "pilotlight_bpf_enabled",
		Help: "1 when the eBPF probes are loaded and attached, 0 when they are disabled (the log says why)."})
	g.Set(0)
	return reg.Register(g)
}
