package rollout

import (
	"math"
	"sort"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// The router's own series the analysis reads.
const (
	requestsMetric = "pilotlight_requests_total"
	durationMetric = "pilotlight_request_duration_seconds"
)

// sample is one revision's cumulative counters at one moment.
type sample struct {
	requests, errors float64
	buckets          map[float64]float64 // upper bound -> cumulative count
}

func takeSample(g prometheus.Gatherer, function, revision string) (sample, error) {
	s := sample{buckets: map[float64]float64{}}
	mfs, err := g.Gather()
	if err != nil {
		return s, err
	}
	for _, mf := range mfs {
		switch mf.GetName() {
		case requestsMetric:
			for _, m := range mf.GetMetric() {
				if label(m, "function") != function || label(m, "revision") != revision {
					continue
				}
				v := m.GetCounter().GetValue()
				s.requests += v
				if code, _ := strconv.Atoi(label(m, "code")); code >= 500 {
					s.errors += v
				}
			}
		case durationMetric:
			for _, m := range mf.GetMetric() {
				if label(m, "function") != function || label(m, "revision") != revision {
					continue
				}
				for _, b := range m.GetHistogram().GetBucket() {
					s.buckets[b.GetUpperBound()] += float64(b.GetCumulativeCount())
				}
				s.buckets[math.Inf(1)] += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return s, nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// window is what happened between two samples.
type window struct {
	Requests, Errors float64
	P99              time.Duration
}

// ErrorRate is the share of requests answered 5xx.
func (w window) ErrorRate() float64 {
	if w.Requests == 0 {
		return 0
	}
	return w.Errors / w.Requests
}

func between(a, b sample) window {
	w := window{Requests: b.requests - a.requests, Errors: b.errors - a.errors}
	delta := make(map[float64]float64, len(b.buckets))
	for le, c := range b.buckets {
		delta[le] = c - a.buckets[le]
	}
	w.P99 = Quantile(0.99, delta)
	return w
}

// Quantile estimates the q-quantile of a cumulative histogram (upper bound
// in seconds -> count, +Inf included), as PromQL's histogram_quantile does.
func Quantile(q float64, cumulative map[float64]float64) time.Duration {
	bs := make([]bucket, 0, len(cumulative))
	for le, c := range cumulative {
		bs = append(bs, bucket{le, c})
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].le < bs[j].le })
	return quantile(q, bs)
}

// bucket is one cumulative histogram bucket.
type bucket struct{ le, count float64 }

// quantile estimates like PromQL's histogram_quantile: linear within the
// bucket that holds the rank; a rank in the +Inf bucket answers the
// highest finite bound.
func quantile(q float64, bs []bucket) time.Duration {
	if len(bs) == 0 || bs[len(bs)-1].count <= 0 {
		return 0
	}
	rank := q * bs[len(bs)-1].count
	prevLE, prevCount := 0.0, 0.0
	for _, b := range bs {
		if b.count >= rank {
			if math.IsInf(b.le, 1) {
				return seconds(prevLE)
			}
			if b.count == prevCount {
				return seconds(b.le)
			}
			return seconds(prevLE + (b.le-prevLE)*(rank-prevCount)/(b.count-prevCount))
		}
		prevLE, prevCount = b.le, b.count
	}
	return seconds(prevLE)
}

func seconds(s float64) time.Duration { return time.Duration(math.Round(s * float64(time.Second))) }
