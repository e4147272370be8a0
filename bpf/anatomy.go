package bpf

import (
	"encoding/binary"
	"time"
)

// States a cold start's wall time is split into (enum anat_state in
// probes.bpf.c), in the kernel's priority order: at each instant the
// process is on CPU if any thread runs, else waiting for a CPU if any
// thread is runnable, else in a page fault if any thread sleeps inside
// one, else blocked (I/O, locks, sleeps).
const (
	StateOnCPU    = "oncpu"
	StateRunqueue = "runqueue"
	StateFaults   = "faults"
	StateBlocked  = "blocked"
)

// anatStates are the state names in the kernel's array order.
var anatStates = [4]string{StateOnCPU, StateRunqueue, StateFaults, StateBlocked}

// anatSnap mirrors struct anat_snap: the anatomy's cumulative counters.
type anatSnap struct {
	NS         [4]uint64
	MajFlt     uint64
	ModelBytes uint64
}

const anatSnapSize = 6 * 8

func decodeAnatSnap(b []byte) anatSnap {
	var s anatSnap
	for i := range s.NS {
		s.NS[i] = binary.LittleEndian.Uint64(b[8*i:])
	}
	s.MajFlt = binary.LittleEndian.Uint64(b[32:])
	s.ModelBytes = binary.LittleEndian.Uint64(b[40:])
	return s
}

// anatomyEntry mirrors struct anatomy, the value of the anatomies map.
type anatomyEntry struct {
	LastNS                      uint64
	Running, Runnable, Faulting int32
	Pad                         int32
	NS                          [4]uint64
	MajFlt                      uint64
	ModelBytes                  uint64
}

// at extrapolates the entry's counters to monotonic time now: the time
// since the kernel last accounted goes to the state the process is in.
func (a *anatomyEntry) at(now uint64) anatSnap {
	s := anatSnap{NS: a.NS, MajFlt: a.MajFlt, ModelBytes: a.ModelBytes}
	if now > a.LastNS {
		st := 3
		switch {
		case a.Running > 0:
			st = 0
		case a.Runnable > 0:
			st = 1
		case a.Faulting > 0:
			st = 2
		}
		s.NS[st] += now - a.LastNS
	}
	return s
}

// PhaseAnatomy is where one phase of a cold start spent its wall time.
type PhaseAnatomy struct {
	Phase  string  `json:"phase"`
	WallMS float64 `json:"wall_ms"`
	// StatesMS splits WallMS into oncpu, runqueue, faults and blocked.
	StatesMS    map[string]float64 `json:"states_ms"`
	MajorFaults uint64             `json:"major_faults"`
	// ModelBytes are bytes read(2) from files named *.onnx.
	ModelBytes uint64 `json:"model_bytes"`
}

// anatomyPhase is one contiguous stretch of a cold start.
type anatomyPhase struct{ name, from, to string }

// Anatomy phases are contiguous, so they add up to the cold start: from
// exec (a fresh process) or from the specialisation (a warm-pool process)
// to the first response write.
var (
	execAnatomy = []anatomyPhase{
		{PhaseExecToListen, EventExec, EventListen},
		{PhaseListenToReady, EventListen, MarkReady},
		{PhaseReadyToAccept, MarkReady, EventAccept},
		{PhaseAcceptToFirstWrite, EventAccept, EventFirstWrite},
	}
	poolAnatomy = []anatomyPhase{
		{PhaseSpecialiseToReady, MarkSpecialiseStart, MarkReady},
		{PhaseReadyToAccept, MarkReady, EventAccept},
		{PhaseAcceptToFirstWrite, EventAccept, EventFirstWrite},
	}
)

// anatomy turns the snapshots taken at a timeline's points into phases.
// A phase whose end snapshot is missing or earlier than its start is left
// out.
func (s *timelineState) anatomy(pool bool) []PhaseAnatomy {
	phases := execAnatomy
	if pool {
		phases = poolAnatomy
	}
	var out []PhaseAnatomy
	for _, ph := range phases {
		from, ok1 := s.snaps[ph.from]
		to, ok2 := s.snaps[ph.to]
		t0, ok3 := s.points[ph.from]
		t1, ok4 := s.points[ph.to]
		if !ok1 || !ok2 || !ok3 || !ok4 || t1.Before(t0) {
			continue
		}
		pa := PhaseAnatomy{Phase: ph.name, WallMS: ms(t1.Sub(t0)), StatesMS: map[string]float64{},
			MajorFaults: sub(to.MajFlt, from.MajFlt), ModelBytes: sub(to.ModelBytes, from.ModelBytes)}
		for i, name := range anatStates {
			pa.StatesMS[name] = ms(time.Duration(sub(to.NS[i], from.NS[i])))
		}
		out = append(out, pa)
	}
	return out
}
