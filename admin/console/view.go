package console

import (
	"sort"
	"time"

	"github.com/pilotlight/pilotlight/bpf"
	"github.com/pilotlight/pilotlight/engine"
	"github.com/pilotlight/pilotlight/rollout"
)

// View is what the page renders: GET /ui/api/state.
type View struct {
	Seq       uint64    `json:"seq"`
	Generated time.Time `json:"generated"`
	// StepSeconds is the spacing of the series' points.
	StepSeconds  float64                `json:"step_seconds"`
	SeriesPoints int                    `json:"series_points"`
	Backend      string                 `json:"backend"`
	Probes       bool                   `json:"probes"`
	Functions    []FunctionView         `json:"functions"`
	Pool         []engine.ProcessStatus `json:"pool"`
	Processes    []engine.ProcessView   `json:"processes"`
	RolloutsOn   bool                   `json:"rollouts_on"`
	// Rollouts are in flight; Finished are the latest that ended, newest first.
	Rollouts []rollout.Status `json:"rollouts"`
	Finished []rollout.Status `json:"finished"`
	Flags    *FlagsView       `json:"flags"`
}

// FunctionView is one function's card.
type FunctionView struct {
	Name      string         `json:"name"`
	Handler   string         `json:"handler"`
	Flag      string         `json:"flag"`
	Revisions []RevisionView `json:"revisions"`
}

// RevisionView is one revision's row.
type RevisionView struct {
	Name   string `json:"name"`
	Tag    string `json:"tag,omitempty"`
	Weight int    `json:"weight"`
	// Local is false on Knative, where instances are the cluster's.
	Local     bool                   `json:"local"`
	Starting  int                    `json:"starting"`
	Ready     int                    `json:"ready"`
	Draining  int                    `json:"draining"`
	Desired   int                    `json:"desired"`
	Queued    int                    `json:"queued"`
	Panic     bool                   `json:"panic"`
	Reason    string                 `json:"reason,omitempty"`
	Instances []engine.ProcessStatus `json:"instances"`
	// Loads and Unloads count a shared revision's loads and unloads by reason.
	Loads      map[string]int  `json:"loads,omitempty"`
	Unloads    map[string]int  `json:"unloads,omitempty"`
	ColdStarts []ColdStartView `json:"cold_starts"`
	Series     Series          `json:"series"`
}

// Series are the revision's request rate and latency per step, oldest
// first; nil where no request was answered in the step.
type Series struct {
	RPS []float64  `json:"rps"`
	P50 []*float64 `json:"p50_ms"`
	P99 []*float64 `json:"p99_ms"`
}

// ColdStartView is one cold start's waterfall.
type ColdStartView struct {
	PID    int       `json:"pid"`
	Source string    `json:"source"` // exec | pool | shared
	At     time.Time `json:"at"`
	// Origin says where the marks come from: "kernel" (the eBPF
	// timeline) or "engine" (the engine's own marks).
	Origin  string  `json:"origin"`
	TotalMS float64 `json:"total_ms"`
	Marks   []Mark  `json:"marks"`
	Bars    []Bar   `json:"bars"`
	// Pending says the first response has not been seen yet.
	Pending bool `json:"pending"`
	// Autoscaled says no request waited: the autoscaler (or minScale)
	// asked for the instance, so there is no arrival and no first response.
	Autoscaled bool `json:"autoscaled"`
}

// Mark is one point of a cold start, in ms since its first point.
type Mark struct {
	Name string  `json:"name"`
	AtMS float64 `json:"at_ms"`
}

// Bar is the time between two consecutive marks.
type Bar struct {
	From    string  `json:"from"`
	To      string  `json:"to"`
	StartMS float64 `json:"start_ms"`
	MS      float64 `json:"ms"`
}

// FlagsView is the flag file in force and its latest reload.
type FlagsView struct {
	Path    string `json:"path"`
	Version string `json:"version"`
	// LastReload is the latest reload the console saw: success, error or
	// missing (the last good flags stay in force on the last two); at is
	// zero while the file is as serve loaded it.
	LastReload   string    `json:"last_reload"`
	LastReloadAt time.Time `json:"last_reload_at,omitzero"`
	// Error is why the file on disk is rejected, when it is.
	Error string `json:"error,omitempty"`
}

// Mark names. The kernel's come from bpf's timeline as they are.
const (
	markArrival       = bpf.MarkRequestArrival
	markExec          = bpf.EventExec
	markSpecialise    = bpf.MarkSpecialiseStart
	markListen        = bpf.EventListen
	markSessionsWarm  = "sessions_warm"
	markReady         = bpf.MarkReady
	markFirstResponse = "first_response"
)

// engineWaterfall lays out a cold start from the engine's own marks:
// arrival, exec or specialise, listening (exec) or sessions warm (pool),
// ready, first response.
func engineWaterfall(c engine.ColdStart) ColdStartView {
	launch, launched := markExec, markListen
	if c.Source == "pool" {
		launch, launched = markSpecialise, markSessionsWarm
	}
	// The engine takes the start's own time as the trigger when no request
	// waited for it; a request's arrival is always earlier than the launch.
	autoscaled := c.Trigger.Equal(c.Launch)
	points := map[string]time.Time{launch: c.Launch, launched: c.Launched, markReady: c.Ready}
	if !autoscaled {
		points[markArrival] = c.Trigger
	}
	if !c.FirstResponse.IsZero() {
		points[markFirstResponse] = c.FirstResponse
	}
	v := waterfall(points, []string{markArrival, launch, launched, markReady, markFirstResponse})
	v.PID, v.Source, v.At, v.Origin = c.PID, c.Source, c.Trigger, "engine"
	v.Autoscaled = autoscaled
	v.Pending = c.FirstResponse.IsZero() && !autoscaled
	return v
}

// kernelWaterfall lays out a cold start from the eBPF timeline's points. A
// warm-pool process was exec'd, bound and listening ahead of demand: its
// waterfall starts at the request's arrival, as bpf's own phases do.
func kernelWaterfall(tl bpf.Timeline) ColdStartView {
	points := map[string]time.Time{}
	var order []string
	var arrival time.Time
	for _, e := range tl.Events {
		if e.Name == markArrival {
			arrival = e.Time
		}
	}
	for _, e := range tl.Events {
		if tl.Source == "pool" && !arrival.IsZero() && e.Time.Before(arrival) {
			continue
		}
		points[e.Name] = e.Time
		order = append(order, e.Name)
	}
	v := waterfall(points, order)
	v.PID, v.Source, v.Origin = tl.PID, tl.Source, "kernel"
	if t, ok := points[markArrival]; ok {
		v.At = t
	}
	if v.At.IsZero() && len(tl.Events) > 0 {
		v.At = tl.Events[0].Time // a pod's: no arrival mark (Knative's activator held the request)
	}
	_, responded := points[bpf.EventFirstWrite]
	// A node agent's timeline is published at ready when the response was
	// not told apart (docs/knative.md): it is complete, not pending.
	_, pod := points[bpf.EventContainerStart]
	v.Pending = !responded && !pod
	return v
}

// waterfall orders the points by time (ties by order) and makes one bar
// between each consecutive pair. Zero times are left out.
func waterfall(points map[string]time.Time, order []string) ColdStartView {
	rank := map[string]int{}
	for i, n := range order {
		rank[n] = i
	}
	var names []string
	for n, t := range points {
		if !t.IsZero() {
			names = append(names, n)
		}
	}
	sort.Slice(names, func(i, j int) bool {
		ti, tj := points[names[i]], points[names[j]]
		if !ti.Equal(tj) {
			return ti.Before(tj)
		}
		return rank[names[i]] < rank[names[j]]
	})
	var v ColdStartView
	if len(names) == 0 {
		return v
	}
	origin := points[names[0]]
	for i, n := range names {
		at := ms(points[n].Sub(origin))
		v.Marks = append(v.Marks, Mark{Name: n, AtMS: at})
		if i > 0 {
			prev := v.Marks[i-1]
			v.Bars = append(v.Bars, Bar{From: prev.Name, To: n, StartMS: prev.AtMS, MS: at - prev.AtMS})
		}
		v.TotalMS = at
	}
	return v
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
