package rollout

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// The router's own series the analysis reads.
const (
	requestsMetric = "pilotlight_requests_total"
	durationMetric = "pilotlight_request_duration_seconds"
	// Each replica's shadow comparisons and labelled outcomes, summed over
	// the fleet in a cluster (Shadower and Outcomes export them).
	shadowRequestsMetric = "pilotlight_shadow_requests_total"
	shadowAgreedMetric   = "pilotlight_shadow_agreement_total"
	shadowDeltaMetric    = "pilotlight_shadow_score_delta"
	labelledMetric       = "pilotlight_outcomes_labelled_total"
	confusionMetric      = "pilotlight_outcomes_confusion_total"
	logLossMetric        = "pilotlight_outcomes_log_loss_total"
	hitsMetric           = "pilotlight_outcomes_hits_total"
)

// sample is one revision's cumulative counters at one moment.
type sample struct {
	requests, errors float64
	buckets          map[float64]float64 // upper bound -> cumulative count
	shadow           ShadowTotals
	outcomes         OutcomeTotals
}

// reset says a replica restarted between a and s: a counter went down.
func (s sample) reset(a sample) bool {
	return s.requests < a.requests || s.shadow.Compared < a.shadow.Compared || s.outcomes.Labelled < a.outcomes.Labelled
}

// addShadow sets one shadow series into s.shadow.
func (s *sample) addShadow(name, result string, v float64) {
	switch {
	case name == shadowAgreedMetric:
		s.shadow.Agreed += v
	case name == shadowDeltaMetric+"_sum":
		s.shadow.DeltaSum += v
	case result == ShadowCompared:
		s.shadow.Compared += v
	case result == ShadowFailed:
		s.shadow.Failed += v
	case result == ShadowIncomparable:
		s.shadow.Incomparable += v
	case result == ShadowDropped:
		s.shadow.Dropped += v
	}
}

// addOutcome sets one outcome series into s.outcomes.
func (s *sample) addOutcome(name, cell string, v float64) {
	t := &s.outcomes
	switch name {
	case labelledMetric:
		t.Labelled += v
	case logLossMetric:
		t.LogLossSum += v
	case hitsMetric:
		t.Hits += v
	case confusionMetric:
		switch cell {
		case "tp":
			t.TP += v
		case "fp":
			t.FP += v
		case "fn":
			t.FN += v
		case "tn":
			t.TN += v
		}
	}
}

// familiesSample reads one revision's counters out of one replica's
// metric families (a registry's Gather, or a scraped /metrics).
func familiesSample(mfs []*dto.MetricFamily, function, revision string) sample {
	s := sample{buckets: map[float64]float64{}}
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
					if math.IsInf(b.GetUpperBound(), 1) {
						continue // a scraped histogram lists +Inf too: the sample count below is it
					}
					s.buckets[b.GetUpperBound()] += float64(b.GetCumulativeCount())
				}
				s.buckets[math.Inf(1)] += float64(m.GetHistogram().GetSampleCount())
			}
		case shadowRequestsMetric, shadowAgreedMetric, shadowDeltaMetric:
			for _, m := range mf.GetMetric() {
				if label(m, "function") != function || label(m, "revision") != revision {
					continue
				}
				if h := m.GetHistogram(); h != nil {
					s.addShadow(mf.GetName()+"_sum", "", h.GetSampleSum())
					continue
				}
				s.addShadow(mf.GetName(), label(m, "result"), m.GetCounter().GetValue())
			}
		case labelledMetric, confusionMetric, logLossMetric, hitsMetric:
			for _, m := range mf.GetMetric() {
				if label(m, "function") != function || label(m, "revision") != revision {
					continue
				}
				s.addOutcome(mf.GetName(), label(m, "cell"), m.GetCounter().GetValue())
			}
		}
	}
	return s
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
	// Source names where the numbers came from (SourceLocal,
	// SourceEndpointSlice, SourcePrometheus); Replicas is how many router
	// replicas were read at both ends of the window, of Listed known.
	Source           string
	Replicas, Listed int
	// Shadow are the comparisons made on every replica read at both ends.
	Shadow ShadowTotals
}

// ErrorRate is the share of requests answered 5xx.
func (w window) ErrorRate() float64 {
	if w.Requests == 0 {
		return 0
	}
	return w.Errors / w.Requests
}

// between is what happened from a to b over the replicas read both times:
// counters summed, and the p99 of the summed bucket deltas (what
// histogram_quantile over sum by (le) answers). A replica whose counters
// went down restarted in between: its counts since are its whole b, as
// PromQL's increase() reads a reset.
func between(a, b fleetSample) window {
	w := window{Source: b.source, Listed: b.listed}
	delta := map[float64]float64{}
	for replica, bs := range b.replicas {
		as, ok := a.replicas[replica]
		if !ok {
			continue // arrived mid-interval: its window is not this one
		}
		w.Replicas++
		if bs.reset(as) {
			as = sample{buckets: map[float64]float64{}}
		}
		w.Requests += bs.requests - as.requests
		w.Errors += bs.errors - as.errors
		w.Shadow = w.Shadow.add(bs.shadow.sub(as.shadow))
		for le, c := range bs.buckets {
			delta[le] += c - as.buckets[le]
		}
	}
	w.P99 = Quantile(0.99, delta)
	return w
}

// sinceStart is every replica's labelled outcomes of one revision from
// the rollout's start (a) to now (b). Unlike a window's counters, a
// replica that was not read at the start counts from zero: labels arrive
// late, and every one a replica holds for the revision came after the
// start if the replica did (a replica that restarted counts from zero, as
// increase() reads a reset).
func sinceStart(a, b fleetSample) OutcomeTotals {
	var t OutcomeTotals
	for replica, bs := range b.replicas {
		as := a.replicas[replica]
		if bs.reset(as) {
			as = sample{}
		}
		t = t.add(bs.outcomes.Sub(as.outcomes))
	}
	return t
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

// Millis is a latency as a person reads it: milliseconds to three
// significant figures ("24.3 ms", "0.512 ms", "1250 ms").
func Millis(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case ms >= 100:
		return strconv.FormatFloat(math.Round(ms), 'f', -1, 64) + " ms"
	case ms >= 10:
		return strconv.FormatFloat(ms, 'f', 1, 64) + " ms"
	case ms >= 1:
		return strconv.FormatFloat(ms, 'f', 2, 64) + " ms"
	}
	return strconv.FormatFloat(ms, 'f', 3, 64) + " ms"
}

func seconds(s float64) time.Duration { return time.Duration(math.Round(s * float64(time.Second))) }

// Interval is what one analysis interval observed: the candidate's live
// requests through the router, and the shadow comparisons of its answers
// with the serving revision's.
type Interval struct {
	window
	Compared, Agreed, DeltaSum, ShadowFailed, ShadowIncomparable float64
	// Outcomes and ServingOutcomes are the candidate's and the serving
	// revision's labelled live predictions since the rollout started
	// (labels arrive late, so they are not cut per interval).
	Outcomes, ServingOutcomes OutcomeTotals
}

// Agreement is the share of compared answers that agreed (0 with none).
func (in Interval) Agreement() float64 {
	if in.Compared == 0 {
		return 0
	}
	return in.Agreed / in.Compared
}

// MeanDelta is the mean |Δ score| of the compared answers.
func (in Interval) MeanDelta() float64 {
	if in.Compared == 0 {
		return 0
	}
	return in.DeltaSum / in.Compared
}

// Judge decides one interval, a pure function of the observed numbers:
// rollback (with the check that failed), hold (too little to judge) or
// advance. onShadow judges shadow comparisons only: no live traffic has
// moved to the candidate yet. Live errors and p99 are judged on any
// traffic, as before; prediction gates only once MinRequests answers were
// compared, so one odd answer does not decide.
func Judge(s Spec, in Interval, onShadow bool, weight int) (verdict, check, reason string) {
	if !onShadow && in.Requests > 0 {
		if in.ErrorRate() > s.MaxErrorRate {
			return VerdictRollback, CheckErrorRate, fmt.Sprintf("error rate %.4f over %.0f requests exceeds %.4f", in.ErrorRate(), in.Requests, s.MaxErrorRate)
		}
		if in.P99 > s.MaxP99 {
			return VerdictRollback, CheckP99, fmt.Sprintf("p99 %s exceeds %s", Millis(in.P99), Millis(s.MaxP99))
		}
	}
	if sent := in.Compared + in.ShadowFailed; sent > 0 && in.ShadowFailed/sent > s.MaxErrorRate {
		return VerdictRollback, CheckShadow, fmt.Sprintf("%.0f of %.0f shadow requests failed (%.4f > %.4f)", in.ShadowFailed, sent, in.ShadowFailed/sent, s.MaxErrorRate)
	}
	// The prediction gates judge shadow copies of the serving revision's
	// traffic; at 100% the candidate serves it all and nothing is left to
	// copy, so the gates judged the steps before and do not hold this one.
	needShadow := onShadow || (s.gated() && weight < 100)
	if needShadow && in.Compared >= float64(s.MinRequests) {
		if s.MinAgreement > 0 && in.Agreement() < s.MinAgreement {
			return VerdictRollback, CheckAgreement, fmt.Sprintf("agreement %.4f over %.0f compared answers is below %.4f", in.Agreement(), in.Compared, s.MinAgreement)
		}
		if s.MaxScoreDelta > 0 && in.MeanDelta() > s.MaxScoreDelta {
			return VerdictRollback, CheckScoreDelta, fmt.Sprintf("mean |Δ score| %.4f over %.0f compared answers exceeds %.4f", in.MeanDelta(), in.Compared, s.MaxScoreDelta)
		}
	}
	outcomes := s.outcomeGated() && !onShadow // shadow answers are not recorded: only live ones get labels
	minLabelled := float64(s.MinLabelled)
	if outcomes && in.Outcomes.Labelled >= minLabelled {
		if s.MinPrecision > 0 && in.Outcomes.Precision() < s.MinPrecision {
			return VerdictRollback, CheckPrecision, fmt.Sprintf("precision %.4f over %.0f labelled outcomes is below %.4f", in.Outcomes.Precision(), in.Outcomes.Labelled, s.MinPrecision)
		}
		if s.MaxLogLossDelta > 0 && in.ServingOutcomes.Labelled >= minLabelled {
			if d := in.Outcomes.LogLoss() - in.ServingOutcomes.LogLoss(); d > s.MaxLogLossDelta {
				return VerdictRollback, CheckLogLoss, fmt.Sprintf("log loss %.4f over %.0f labelled outcomes exceeds the serving revision's %.4f (over %.0f) by %.4f > %.4f",
					in.Outcomes.LogLoss(), in.Outcomes.Labelled, in.ServingOutcomes.LogLoss(), in.ServingOutcomes.Labelled, d, s.MaxLogLossDelta)
			}
		}
	}
	switch {
	case !onShadow && in.Requests < float64(s.MinRequests):
		return VerdictHold, CheckTraffic, fmt.Sprintf("%.0f candidate requests, need %d to judge", in.Requests, s.MinRequests)
	case needShadow && in.Compared < float64(s.MinRequests) && in.ShadowIncomparable > 0:
		return VerdictHold, CheckTraffic, fmt.Sprintf("%.0f compared shadow answers, need %d to judge (%.0f answered copies could not be compared: the platform log says why)", in.Compared, s.MinRequests, in.ShadowIncomparable)
	case needShadow && in.Compared < float64(s.MinRequests):
		return VerdictHold, CheckTraffic, fmt.Sprintf("%.0f compared shadow answers, need %d to judge", in.Compared, s.MinRequests)
	case outcomes && in.Outcomes.Labelled < minLabelled:
		return VerdictHold, CheckTraffic, fmt.Sprintf("%.0f labelled outcomes of the candidate, need %d to judge", in.Outcomes.Labelled, s.MinLabelled)
	case outcomes && s.MaxLogLossDelta > 0 && in.ServingOutcomes.Labelled < minLabelled:
		return VerdictHold, CheckTraffic, fmt.Sprintf("%.0f labelled outcomes of the serving revision, need %d to compare log loss", in.ServingOutcomes.Labelled, s.MinLabelled)
	}
	var b strings.Builder
	if onShadow {
		fmt.Fprintf(&b, "healthy on shadow traffic: %.0f compared", in.Compared)
	} else {
		fmt.Fprintf(&b, "healthy at %d%%: error rate %.4f ≤ %.4f, p99 %s ≤ %s", weight, in.ErrorRate(), s.MaxErrorRate, Millis(in.P99), Millis(s.MaxP99))
	}
	if needShadow && s.MinAgreement > 0 {
		fmt.Fprintf(&b, ", agreement %.4f ≥ %.4f", in.Agreement(), s.MinAgreement)
	}
	if needShadow && s.MaxScoreDelta > 0 {
		fmt.Fprintf(&b, ", mean |Δ score| %.4f ≤ %.4f", in.MeanDelta(), s.MaxScoreDelta)
	}
	if outcomes && s.MinPrecision > 0 {
		fmt.Fprintf(&b, ", precision %.4f ≥ %.4f over %.0f labelled", in.Outcomes.Precision(), s.MinPrecision, in.Outcomes.Labelled)
	}
	if outcomes && s.MaxLogLossDelta > 0 {
		fmt.Fprintf(&b, ", log loss %.4f vs serving %.4f (Δ ≤ %.4f)", in.Outcomes.LogLoss(), in.ServingOutcomes.LogLoss(), s.MaxLogLossDelta)
	}
	return VerdictAdvance, CheckHealthy, b.String()
}
