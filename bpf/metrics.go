package bpf

import (
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
		"Time request bytes waited in an instance's socket receive queue between arriving and being read.",
		[]string{"function", "revision"}, nil)
	descSyscall = prometheus.NewDesc("pilotlight_bpf_network_syscall_seconds",
		"Time an instance spent inside network syscalls (accept, read/write on sockets, send*/recv*, connect).",
		[]string{"function", "revision"}, nil)
)

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
	c.p.coldStart.Describe(ch)
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
			count, sum, buckets := r.h[k].promBuckets()
			ch <- prometheus.MustNewConstHistogram(d, count, sum, buckets, r.function, r.revision)
		}
	}
	p.coldStart.Collect(ch)
}

// Disabled registers pilotlight_bpf_enabled 0 on reg, for a platform that
// runs without probes (New failed: log its error, which says why).
func Disabled(reg prometheus.Registerer) error {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "pilotlight_bpf_enabled",
		Help: "1 when the eBPF probes are loaded and attached, 0 when they are disabled (the log says why)."})
	g.Set(0)
	return reg.Register(g)
}
