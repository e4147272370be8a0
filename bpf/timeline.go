package bpf

import (
	"errors"
	"slices"
	"sort"
	"time"

	"github.com/cilium/ebpf"
)

// Event and mark names in a Timeline, in the order they normally happen.
const (
	EventContainerStart = "container_start"  // kernel: the container's process forked (by runc, before its exec; the node agent)
	EventExec           = "exec"             // kernel: sched_process_exec
	EventListen         = "listen"           // kernel: first TCP socket put in LISTEN
	EventFirstAccept    = "first_accept"     // kernel: first connection established to it, usually the engine's readiness poll
	MarkSpecialiseStart = "specialise_start" // user space: a warm-pool process is asked to load a model
	MarkRequestArrival  = "request_arrival"  // user space: the request that needed the instance arrived
	MarkReady           = "ready"            // user space: the engine saw the instance ready; or kernel: the runtime's tagged ready answer (Config.ReadyPriority)
	MarkPodReady        = "pod_ready"        // user space: the pod's Ready condition reached the node agent (an observation, no phase)
	EventAccept         = "accept"           // kernel: first connection established after the ready mark
	EventFirstWrite     = "first_write"      // kernel: first send by the instance on that connection (the response)
)

// Phase names observed in pilotlight_bpf_cold_start_phase_seconds.
const (
	PhaseStartToExec         = "container_start_to_exec"
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
	{PhaseStartToExec, EventContainerStart, EventExec, true},
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
		MarkRequestArrival, MarkReady, EventAccept, EventFirstWrite, MarkPodReady} {
		if n == name {
			return i
		}
	}
	return 100
}

// Mark records a point of pid's cold start that only user space knows:
// MarkRequestArrival, MarkReady, MarkSpecialiseStart. MarkReady also arms
// the kernel side: the next accept is the cold-start request's.
func (p *Probes) Mark(pid int, phase string, t time.Time) {
	if pid <= 0 || phase == "" {
		return
	}
	key := uint32(pid)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.done[key] {
		return
	}
	// Marks are for instances the engine tracks (or whose exec was seen):
	// a stray pid must not leave state nobody cleans up.
	if p.instances[key] == nil && p.states[key] == nil {
		return
	}
	st := p.state(key)
	st.points[phase] = t.Round(0)
	if phase == MarkRequestArrival || phase == MarkPodReady {
		return // observations: no anatomy phase starts or ends there
	}
	// The other marks start or end an anatomy phase: take the kernel's
	// counters as of the mark.
	p.openTimeline(key)
	var a anatomyEntry
	if err := p.anatomies.Lookup(key, &a); err == nil {
		st.snaps[phase] = a.at(p.clock.mono(t))
	}
	if phase != MarkReady {
		return
	}
	if err := p.ready.Update(key, uint64(1), ebpf.UpdateAny); err != nil {
		p.log.Debug("bpf: arm ready", "pid", pid, "err", err)
	}
	// Ready means the model is loaded: its reads are counted. The first
	// request may come much later (an idle minimum-scale instance), and
	// the syscall tracepoints cost every task meanwhile.
	p.loaded(key)
	if p.execComm {
		// A pod's ready mark given from the API (without tagged probes)
		// is the kubelet's view, which may come after Knative's
		// activator, probing the pod itself, sent the held request: the
		// connection armed above may never come. The timeline is
		// published up to ready, and with the response if it was seen,
		// readyGrace later.
		p.publishAfter(key, readyGrace)
	}
}

// taggedResponseGrace is how long after a pod's tagged ready answer its
// timeline waits for the first request's response before it is published
// without it (a pod started with no request waiting: initial or minimum
// scale). Knative's activator sends the held request once it has probed
// the pod ready, well within this.
const taggedResponseGrace = 30 * time.Second

// publishAfter publishes key's timeline after grace unless its response
// completed it first. Callers hold p.mu.
func (p *Probes) publishAfter(key uint32, grace time.Duration) {
	time.AfterFunc(grace, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if st := p.states[key]; st != nil && !p.closed && !p.done[key] {
			// An accept without its response is some other
			// connection's (a probe's): left out, not reported.
			delete(st.points, EventAccept)
			p.complete(key, st)
		}
	})
}

// LatestTimelines returns the latest complete cold-start timeline of each
// revision, keyed "function/revision".
func (p *Probes) LatestTimelines() map[string]Timeline {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]Timeline, len(p.latest))
	for k, v := range p.latest {
		out[k] = v
	}
	return out
}

// state returns pid's open timeline, creating it.
func (p *Probes) state(pid uint32) *timelineState {
	st := p.states[pid]
	if st == nil {
		st = newTimelineState(pid)
		if in := p.instances[pid]; in != nil {
			st.function, st.revision = in.function, in.revision
		}
		p.states[pid] = st
	}
	return st
}

// timelineEntry mirrors struct timeline, the value of the timelines map.
type timelineEntry struct {
	FirstAcceptNS, AcceptNS, AcceptSK, ReadyNS uint64
}

// openTimeline makes sure the kernel follows pid's listen/accept/write and
// its anatomy even when its exec was not seen (not a child of ParentPID).
func (p *Probes) openTimeline(pid uint32) {
	if p.done[pid] {
		return
	}
	err := p.timelines.Update(pid, timelineEntry{}, ebpf.UpdateNoExist)
	if err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
		p.log.Debug("bpf: open timeline", "pid", pid, "err", err)
	}
	// Its threads' states are unknown until each next switches: counted
	// blocked until then.
	a := anatomyEntry{LastNS: p.clock.mono(time.Now())}
	err = p.anatomies.Update(pid, a, ebpf.UpdateNoExist)
	switch {
	case err == nil:
		p.bumpGen()
	case !errors.Is(err, ebpf.ErrKeyExist):
		p.log.Debug("bpf: open anatomy", "pid", pid, "err", err)
	}
}

// openColdStart attaches what tracked pid's cold start needs: on_sys_exit
// until it is ready (its model-file reads), on_wakeup until its response
// or readyGrace after ready, and on_send_length (its response) until its
// response.
func (p *Probes) openColdStart(pid uint32) {
	if p.done[pid] {
		return
	}
	now := time.Now()
	if _, ok := p.coldOpen[pid]; !ok {
		p.coldOpen[pid] = now
	}
	if _, ok := p.anatOpen[pid]; !ok {
		p.anatOpen[pid] = now.Add(maxColdStart)
	}
	if _, ok := p.tlOpen[pid]; !ok {
		p.tlOpen[pid] = now.Add(maxColdStart)
	}
	if err := p.attach(slices.Concat([]string{wakeupProgram, modelReadProgram}, coldStartPrograms)...); err != nil {
		p.log.Warn("bpf: attach the cold-start programs; this cold start's anatomy and model-file bytes are incomplete", "pid", pid, "err", err)
	}
}

// loaded ends pid's loading: the syscall programs detach once no tracked
// instance is loading, and on_wakeup readyGrace later unless the response
// came first.
func (p *Probes) loaded(pid uint32) {
	delete(p.coldOpen, pid)
	if until, ok := p.anatOpen[pid]; ok {
		if end := time.Now().Add(readyGrace); end.Before(until) {
			p.anatOpen[pid] = end
		}
		time.AfterFunc(readyGrace+10*time.Millisecond, func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			if !p.closed {
				p.syncLinks()
			}
		})
	}
	p.syncLinks()
}

// closeColdStart ends pid's cold start: what it needed detaches once no
// other needs it.
func (p *Probes) closeColdStart(pid uint32) {
	delete(p.coldOpen, pid)
	delete(p.anatOpen, pid)
	delete(p.tlOpen, pid)
	p.syncLinks()
}

// stateIfOpen is pid's timeline, or a throwaway one when it completed already.
func (p *Probes) stateIfOpen(pid uint32) *timelineState {
	if p.done[pid] {
		return newTimelineState(pid)
	}
	return p.state(pid)
}

// complete publishes pid's timeline and observes its phases.
func (p *Probes) complete(pid uint32, st *timelineState) {
	if st.done || p.done[pid] {
		return
	}
	st.done = true
	p.done[pid] = true
	delete(p.states, pid)
	p.closeColdStart(pid)
	if st.function == "" {
		p.log.Debug("bpf: timeline of an untracked pid dropped", "pid", pid)
		return
	}
	tl := st.build()
	for _, d := range phaseDefs {
		if v, ok := tl.Phases[d.name]; ok {
			p.coldStart.WithLabelValues(st.function, st.revision, d.name).Observe(v / 1000)
		}
	}
	for _, ph := range tl.Anatomy {
		for _, state := range anatStates {
			p.coldStartTime.WithLabelValues(st.function, st.revision, ph.Phase, state).Observe(ph.StatesMS[state] / 1000)
		}
		p.coldMajFaults.WithLabelValues(st.function, st.revision, ph.Phase).Add(float64(ph.MajorFaults))
		p.coldModelBytes.WithLabelValues(st.function, st.revision, ph.Phase).Add(float64(ph.ModelBytes))
	}
	p.latest[st.function+"/"+st.revision] = tl
	p.log.Debug("bpf: cold start timeline", "function", st.function, "revision", st.revision, "pid", pid, "phases_ms", tl.Phases)
}

func (s *timelineState) execTime() (time.Time, bool) {
	if s == nil {
		return time.Time{}, false
	}
	t, ok := s.points[EventExec]
	return t, ok
}
