package bpf

import (
	"sort"
	"time"
)

// Event and mark names in a Timeline, in the order they normally happen.
const (
	EventExec           = "exec"             // kernel: sched_process_exec
	EventListen         = "listen"           // kernel: first TCP socket put in LISTEN
	EventFirstAccept    = "first_accept"     // kernel: first connection established to it, usually the engine's readiness poll
	MarkSpecialiseStart = "specialise_start" // user space: a warm-pool process is asked to load a model
	MarkRequestArrival  = "request_arrival"  // user space: the request that needed the instance arrived
	MarkReady           = "ready"            // user space: the engine saw the instance ready
	EventAccept         = "accept"           // kernel: first connection established after the ready mark
	EventFirstWrite     = "first_write"      // kernel: first send by the instance on that connection (the response)
)

// Phase names observed in pilotlight_bpf_cold_start_phase_seconds.
const (
	PhaseExecToListen        = "exec_to_listen"
	PhaseListenToReady       = "listen_to_ready"
	PhaseSpecialiseToReady   = "specialise_to_ready"
	PhaseReadyToAccept       = "ready_to_accept"
	PhaseAcceptToFirstWrite  = "accept_to_first_write"
	PhaseArrivalToFirstWrite = "arrival_to_first_write"
)

// phaseDef is one duration between two points of a timeline.
type phaseDef struct {
	name, from, to string
	execOnly       bool // skipped for warm-pool instances, whose exec was ahead of demand
}

var phaseDefs = []phaseDef{
	{PhaseExecToListen, EventExec, EventListen, true},
	{PhaseListenToReady, EventListen, MarkReady, true},
	{PhaseSpecialiseToReady, MarkSpecialiseStart, MarkReady, false},
	{PhaseReadyToAccept, MarkReady, EventAccept, false},
	{PhaseAcceptToFirstWrite, EventAccept, EventFirstWrite, false},
	{PhaseArrivalToFirstWrite, MarkRequestArrival, EventFirstWrite, false},
}

// Timeline is one instance's cold start, as the admin API shows it.
type Timeline struct {
	PID      int    `json:"pid"`
	Function string `json:"function"`
	Revision string `json:"revision"`
	// Source is "exec" for a process started for this revision, "pool"
	// for a warm-pool process specialised to it.
	Source string          `json:"source"`
	Events []TimelineEvent `json:"events"`
	// Phases are the durations observed in
	// pilotlight_bpf_cold_start_phase_seconds, in milliseconds.
	Phases map[string]float64 `json:"phases_ms"`
	// Anatomy splits the cold start, from exec (or the specialisation) to
	// the first response write, into contiguous phases, and each phase's
	// wall time into the states of pilotlight_bpf_cold_start_time_seconds.
	Anatomy []PhaseAnatomy `json:"anatomy,omitempty"`
}

// TimelineEvent is one point of a Timeline.
type TimelineEvent struct {
	Name string    `json:"name"`
	Time time.Time `json:"time"`
	// OffsetMS is the time since exec (or since the earliest event when
	// the exec was not seen), in milliseconds.
	OffsetMS float64 `json:"offset_ms"`
}

// timelineState collects one pid's events until its first response write.
type timelineState struct {
	pid                uint32
	function, revision string
	points             map[string]time.Time
	snaps              map[string]anatSnap // the anatomy's counters at a point
	done               bool
}

func newTimelineState(pid uint32) *timelineState {
	return &timelineState{pid: pid, points: map[string]time.Time{}, snaps: map[string]anatSnap{}}
}

// firstWith is first, with the anatomy's counters at that point.
func (s *timelineState) firstWith(name string, t time.Time, snap anatSnap) {
	if _, ok := s.points[name]; !ok {
		s.points[name] = t.Round(0)
		s.snaps[name] = snap
	}
}

// first records name at t unless it is already known: the kernel reports
// each point once, but two threads may race to report it.
func (s *timelineState) first(name string, t time.Time) {
	if _, ok := s.points[name]; !ok {
		s.points[name] = t.Round(0)
	}
}

// build turns the points into a Timeline and the phase durations.
// Negative durations (a mark given for a time before the kernel event it
// is compared with) are left out rather than observed.
func (s *timelineState) build() Timeline {
	tl := Timeline{PID: int(s.pid), Function: s.function, Revision: s.revision, Source: "exec", Phases: map[string]float64{}}
	_, pool := s.points[MarkSpecialiseStart]
	if pool {
		tl.Source = "pool"
	}
	origin, haveExec := s.points[EventExec]
	if !haveExec {
		first := true
		for _, t := range s.points {
			if first || t.Before(origin) {
				origin, first = t, false
			}
		}
	}
	for name, t := range s.points {
		tl.Events = append(tl.Events, TimelineEvent{Name: name, Time: t, OffsetMS: ms(t.Sub(origin))})
	}
	sort.SliceStable(tl.Events, func(i, j int) bool {
		if !tl.Events[i].Time.Equal(tl.Events[j].Time) {
			return tl.Events[i].Time.Before(tl.Events[j].Time)
		}
		return eventOrder(tl.Events[i].Name) < eventOrder(tl.Events[j].Name)
	})
	for _, d := range phaseDefs {
		if d.execOnly && pool {
			continue
		}
		from, ok1 := s.points[d.from]
		to, ok2 := s.points[d.to]
		if !ok1 || !ok2 || to.Before(from) {
			continue
		}
		tl.Phases[d.name] = ms(to.Sub(from))
	}
	tl.Anatomy = s.anatomy(pool)
	return tl
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// eventOrder breaks ties between events with the same timestamp.
func eventOrder(name string) int {
	for i, n := range []string{EventExec, EventListen, EventFirstAccept, MarkSpecialiseStart,
		MarkRequestArrival, MarkReady, EventAccept, EventFirstWrite} {
		if n == name {
			return i
		}
	}
	return 100
}
