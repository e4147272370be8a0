package console

import (
	"fmt"
	"math"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/pilotlight/pilotlight/bpf"
	"github.com/pilotlight/pilotlight/engine"
	"github.com/pilotlight/pilotlight/flags"
	"github.com/pilotlight/pilotlight/rollout"
)

// What the console keeps of the past.
const (
	// seriesPoints is how many steps the charts show (five minutes at the default step).
	seriesPoints = 60
	// coldStartsKept is how many of a revision's latest cold starts the waterfall shows.
	coldStartsKept = 3
	// finishedKept is how many ended rollouts stay listed.
	finishedKept = 5
)

// The series the console reads from the router's registry.
const (
	requestsMetric = "pilotlight_requests_total"
	durationMetric = "pilotlight_request_duration_seconds"
	reloadMetric   = "pilotlight_flags_reload_total"
)

// history is what the console remembers between ticks; only the sampling
// goroutine touches it.
type history struct {
	step     time.Duration
	revs     map[string]*revHistory // "function/revision"
	finished []rollout.Status
	reloads  map[string]float64 // pilotlight_flags_reload_total by result, at the last tick
	reload   FlagsView
}

type revHistory struct {
	last  *sample
	rps   []float64
	p50   []*float64
	p99   []*float64
	colds []coldEntry // newest first
}

// sample is one revision's cumulative counters at one moment.
type sample struct {
	at       time.Time
	requests float64
	buckets  map[float64]float64 // upper bound (s) -> cumulative count, +Inf included
}

type coldEntry struct {
	engine   engine.ColdStart
	timeline *bpf.Timeline
}

func newHistory(step time.Duration) *history {
	return &history{step: step, revs: map[string]*revHistory{}}
}

func (h *history) rev(key string) *revHistory {
	r, ok := h.revs[key]
	if !ok {
		r = &revHistory{}
		h.revs[key] = r
	}
	return r
}

// observe folds one read of the platform and one gather of the registry
// into the history and returns the view of now.
func (h *history) observe(now time.Time, st State, mfs []*dto.MetricFamily) View {
	samples, reloads := parseMetrics(now, mfs)
	v := View{Generated: now, StepSeconds: h.step.Seconds(), SeriesPoints: seriesPoints, Backend: st.Backend, Probes: st.Probes,
		Pool: st.Pool, Processes: st.Processes, RolloutsOn: st.RolloutsOn, Functions: []FunctionView{}, Rollouts: []rollout.Status{}}
	if v.Pool == nil {
		v.Pool = []engine.ProcessStatus{}
	}
	if v.Processes == nil {
		v.Processes = []engine.ProcessView{}
	}
	for _, fn := range st.Functions {
		fv := FunctionView{Name: fn.Name, Handler: fn.Handler, Flag: fn.Flag, Revisions: []RevisionView{}}
		for _, r := range fn.Revisions {
			key := fn.Name + "/" + r.Name
			rh := h.rev(key)
			rh.addSample(samples[key], h.step)
			var tl *bpf.Timeline
			if t, ok := st.Timelines[key]; ok {
				tl = &t
			}
			rh.addColdStart(r.Engine, tl)
			fv.Revisions = append(fv.Revisions, rh.view(r))
		}
		v.Functions = append(v.Functions, fv)
	}
	for _, ro := range st.Rollouts {
		if ro.State == rollout.StateRunning {
			v.Rollouts = append(v.Rollouts, ro)
			continue
		}
		h.addFinished(ro)
	}
	v.Finished = append([]rollout.Status{}, h.finished...)
	if st.Flags != nil {
		h.addReloads(now, st.Flags, reloads)
		fv := h.reload
		v.Flags = &fv
	}
	return v
}

// addSample adds a point to the series once a step has passed since the last one.
func (r *revHistory) addSample(s *sample, step time.Duration) {
	if s == nil {
		return
	}
	if r.last == nil {
		r.last = s
		return
	}
	elapsed := s.at.Sub(r.last.at)
	if elapsed < step {
		return
	}
	delta := make(map[float64]float64, len(s.buckets))
	for le, c := range s.buckets {
		delta[le] = c - r.last.buckets[le]
	}
	r.rps = keep(r.rps, round3((s.requests-r.last.requests)/elapsed.Seconds()))
	var p50, p99 *float64
	if delta[math.Inf(1)] > 0 {
		p50, p99 = msPtr(rollout.Quantile(0.5, delta)), msPtr(rollout.Quantile(0.99, delta))
	}
	r.p50, r.p99 = keep(r.p50, p50), keep(r.p99, p99)
	r.last = s
}

func keep[T any](xs []T, x T) []T {
	xs = append(xs, x)
	if len(xs) > seriesPoints {
		xs = xs[len(xs)-seriesPoints:]
	}
	return xs
}

func msPtr(d time.Duration) *float64 {
	v := round3(ms(d))
	return &v
}

// round3 keeps three decimals: the page shows fewer, and the state is sent every second.
func round3(x float64) float64 { return math.Round(x*1000) / 1000 }

// addColdStart remembers the engine's latest cold start (it reports one
// per revision) and attaches the kernel timeline of the same process.
func (r *revHistory) addColdStart(st *engine.Status, tl *bpf.Timeline) {
	if st != nil && st.LastCold != nil {
		c := *st.LastCold
		if len(r.colds) > 0 && r.colds[0].engine.PID == c.PID && r.colds[0].engine.Trigger.Equal(c.Trigger) {
			r.colds[0].engine = c // the first response may have arrived since
		} else {
			r.colds = append([]coldEntry{{engine: c}}, r.colds...)
			if len(r.colds) > coldStartsKept {
				r.colds = r.colds[:coldStartsKept]
			}
		}
	}
	if tl == nil {
		return
	}
	for i := range r.colds {
		if r.colds[i].engine.PID == tl.PID {
			r.colds[i].timeline = tl
			return
		}
	}
	if st != nil {
		return
	}
	// No engine (the Knative backend): the nodes' agents' timelines are
	// the cold starts. The same pod's timeline comes back on every read.
	if len(r.colds) > 0 && r.colds[0].timeline != nil && r.colds[0].timeline.PID == tl.PID && sameStart(r.colds[0].timeline, tl) {
		return
	}
	r.colds = append([]coldEntry{{timeline: tl}}, r.colds...)
	if len(r.colds) > coldStartsKept {
		r.colds = r.colds[:coldStartsKept]
	}
}

// sameStart says two timelines begin at the same event: one cold start.
func sameStart(a, b *bpf.Timeline) bool {
	return len(a.Events) > 0 && len(b.Events) > 0 && a.Events[0].Time.Equal(b.Events[0].Time)
}

func (r *revHistory) view(rev Revision) RevisionView {
	v := RevisionView{Name: rev.Name, Tag: rev.Tag, Weight: rev.Weight, Instances: []engine.ProcessStatus{}, ColdStarts: []ColdStartView{}}
	if st := rev.Engine; st != nil {
		v.Local, v.Desired, v.Queued, v.Panic, v.Reason = true, st.Desired, st.Queued, st.Panic, st.Reason
		v.Loads, v.Unloads = st.Loads, st.Unloads
		v.Instances = append(v.Instances, st.Instances...)
		for _, in := range st.Instances {
			switch in.State {
			case "starting":
				v.Starting++
			case "ready":
				v.Ready++
			case "draining":
				v.Draining++
			}
		}
	}
	for _, c := range r.colds {
		if c.timeline != nil && len(c.timeline.Events) > 0 {
			v.ColdStarts = append(v.ColdStarts, kernelWaterfall(*c.timeline))
			continue
		}
		v.ColdStarts = append(v.ColdStarts, engineWaterfall(c.engine))
	}
	v.Series = Series{RPS: append([]float64{}, r.rps...), P50: append([]*float64{}, r.p50...), P99: append([]*float64{}, r.p99...)}
	return v
}

// addFinished remembers an ended rollout, newest first.
func (h *history) addFinished(st rollout.Status) {
	for i, f := range h.finished {
		if f.Spec.Function == st.Spec.Function && f.Started.Equal(st.Started) {
			h.finished[i] = st
			return
		}
	}
	h.finished = append([]rollout.Status{st}, h.finished...)
	if len(h.finished) > finishedKept {
		h.finished = h.finished[:finishedKept]
	}
}

// addReloads follows the watcher's reload counter: the result whose count
// rose is the latest reload. A rejected file is read again (by the flags
// package, its one parser) to say why.
func (h *history) addReloads(now time.Time, f *Flags, counts map[string]float64) {
	h.reload.Path, h.reload.Version = f.Path, f.Version
	if h.reloads == nil {
		h.reloads = counts
		h.reload.LastReload = flags.ReloadSuccess // serve loaded it before the console started
		return
	}
	var latest string
	for _, result := range []string{flags.ReloadSuccess, flags.ReloadMissing, flags.ReloadError} {
		if counts[result] > h.reloads[result] {
			latest = result // a problem outranks a success seen in the same tick
		}
	}
	h.reloads = counts
	if latest == "" {
		return
	}
	h.reload.LastReload, h.reload.LastReloadAt, h.reload.Error = latest, now, ""
	switch latest {
	case flags.ReloadMissing:
		h.reload.Error = fmt.Sprintf("%s is gone; the last good flags stay in force", f.Path)
	case flags.ReloadError:
		if _, err := flags.Load(f.Path); err != nil {
			h.reload.Error = err.Error() + "; the last good flags stay in force"
		}
	}
}

// parseMetrics reads the request counters and latency histograms per
// "function/revision", and the flag reload counters by result.
func parseMetrics(now time.Time, mfs []*dto.MetricFamily) (map[string]*sample, map[string]float64) {
	samples := map[string]*sample{}
	reloads := map[string]float64{}
	get := func(m *dto.Metric) *sample {
		var fn, rev string
		for _, l := range m.GetLabel() {
			switch l.GetName() {
			case "function":
				fn = l.GetValue()
			case "revision":
				rev = l.GetValue()
			}
		}
		if fn == "" || rev == "" {
			return nil
		}
		s, ok := samples[fn+"/"+rev]
		if !ok {
			s = &sample{at: now, buckets: map[float64]float64{}}
			samples[fn+"/"+rev] = s
		}
		return s
	}
	for _, mf := range mfs {
		switch mf.GetName() {
		case requestsMetric:
			for _, m := range mf.GetMetric() {
				if s := get(m); s != nil {
					s.requests += m.GetCounter().GetValue()
				}
			}
		case durationMetric:
			for _, m := range mf.GetMetric() {
				s := get(m)
				if s == nil {
					continue
				}
				for _, b := range m.GetHistogram().GetBucket() {
					s.buckets[b.GetUpperBound()] += float64(b.GetCumulativeCount())
				}
				s.buckets[math.Inf(1)] += float64(m.GetHistogram().GetSampleCount())
			}
		case reloadMetric:
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "result" {
						reloads[l.GetValue()] += m.GetCounter().GetValue()
					}
				}
			}
		}
	}
	return samples, reloads
}
