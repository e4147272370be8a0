package bpf

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestTimelineBuild(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(ms float64) time.Time { return t0.Add(time.Duration(ms * float64(time.Millisecond))) }
	tests := []struct {
		name       string
		points     map[string]float64 // name -> ms after t0
		wantSource string
		wantPhases map[string]float64
		wantFirst  string
	}{{
		name: "exec",
		points: map[string]float64{EventExec: 0, EventListen: 3, EventFirstAccept: 5,
			MarkRequestArrival: -1, MarkReady: 40, EventAccept: 41, EventFirstWrite: 45},
		wantSource: "exec",
		wantPhases: map[string]float64{PhaseExecToListen: 3, PhaseListenToReady: 37, PhaseReadyToAccept: 1,
			PhaseAcceptToFirstWrite: 4, PhaseArrivalToFirstWrite: 46},
		wantFirst: MarkRequestArrival,
	}, {
		name: "pool: no exec_to_listen or listen_to_ready, the exec was ahead of demand",
		points: map[string]float64{EventExec: 0, EventListen: 3, MarkSpecialiseStart: 1000, MarkRequestArrival: 999,
			MarkReady: 1010, EventAccept: 1011, EventFirstWrite: 1012},
		wantSource: "pool",
		wantPhases: map[string]float64{PhaseSpecialiseToReady: 10, PhaseReadyToAccept: 1, PhaseAcceptToFirstWrite: 1,
			PhaseArrivalToFirstWrite: 13},
		wantFirst: EventExec,
	}, {
		name:       "no exec seen: offsets from the earliest point; a negative duration is left out",
		points:     map[string]float64{EventListen: 10, MarkReady: 20, EventAccept: 19, EventFirstWrite: 25},
		wantSource: "exec",
		wantPhases: map[string]float64{PhaseListenToReady: 10, PhaseAcceptToFirstWrite: 6},
		wantFirst:  EventListen,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := newTimelineState(42)
			st.function, st.revision = "fraud", "fraud-00002"
			for name, ms := range tt.points {
				st.first(name, at(ms))
			}
			tl := st.build()
			if tl.Source != tt.wantSource || tl.PID != 42 || tl.Function != "fraud" {
				t.Errorf("got pid %d function %q source %q", tl.PID, tl.Function, tl.Source)
			}
			if len(tl.Phases) != len(tt.wantPhases) {
				t.Errorf("phases %v, want %v", tl.Phases, tt.wantPhases)
			}
			for name, want := range tt.wantPhases {
				if got, ok := tl.Phases[name]; !ok || math.Abs(got-want) > 1e-9 {
					t.Errorf("phase %s = %v (present %v), want %v", name, got, ok, want)
				}
			}
			if len(tl.Events) != len(tt.points) || tl.Events[0].Name != tt.wantFirst {
				t.Fatalf("events %+v, want %d starting with %s", tl.Events, len(tt.points), tt.wantFirst)
			}
			for i := 1; i < len(tl.Events); i++ {
				if tl.Events[i].Time.Before(tl.Events[i-1].Time) {
					t.Errorf("events out of order: %+v", tl.Events)
				}
			}
			origin := tt.points[EventExec]
			if _, ok := tt.points[EventExec]; !ok {
				origin = tt.points[tt.wantFirst]
			}
			for _, e := range tl.Events {
				if want := tt.points[e.Name] - origin; math.Abs(e.OffsetMS-want) > 1e-9 {
					t.Errorf("%s offset %v ms, want %v", e.Name, e.OffsetMS, want)
				}
			}
			if _, err := json.Marshal(tl); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestTimelineFirstWins(t *testing.T) {
	st := newTimelineState(1)
	t0 := time.Now()
	st.first(EventListen, t0)
	st.first(EventListen, t0.Add(time.Second))
	if got := st.points[EventListen]; !got.Equal(t0) {
		t.Errorf("bind = %s, want the first report %s", got, t0)
	}
}

func TestPromBuckets(t *testing.T) {
	var h log2Hist
	h.Buckets[0] = 1  // [0,2) ns
	h.Buckets[9] = 2  // [512,1024) ns: below the first bound, 1.024 µs
	h.Buckets[10] = 3 // [1024,2048) ns
	h.Buckets[20] = 4 // ~1 ms
	h.Buckets[39] = 5 // beyond the last bound (~34 s)
	h.SumNS = 2_500_000_000
	count, sum, buckets := h.promBuckets()
	if count != 15 || sum != 2.5 {
		t.Errorf("count %d sum %v, want 15 and 2.5", count, sum)
	}
	if len(buckets) != maxBoundLog2-minBoundLog2+1 {
		t.Errorf("%d buckets", len(buckets))
	}
	for _, tt := range []struct {
		le   float64
		want uint64
	}{{1024e-9, 3}, {2048e-9, 6}, {math.Ldexp(1, 20) / 1e9, 6}, {math.Ldexp(1, 21) / 1e9, 10}, {math.Ldexp(1, 35) / 1e9, 10}} {
		if got, ok := buckets[tt.le]; !ok || got != tt.want {
			t.Errorf("le=%g: %d (present %v), want %d", tt.le, got, ok, tt.want)
		}
	}
}

func TestAddDeltaNeverGoesBackwards(t *testing.T) {
	var tot log2Hist
	prev := log2Hist{Count: 5, SumNS: 100}
	prev.Buckets[3] = 5
	cur := log2Hist{Count: 7, SumNS: 90} // a sum that went down contributes nothing
	cur.Buckets[3] = 7
	tot.addDelta(&cur, &prev)
	if tot.Count != 2 || tot.SumNS != 0 || tot.Buckets[3] != 2 {
		t.Errorf("got %+v", tot)
	}
}

func TestLoadErrorsAreOneActionableSentence(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{fmt.Errorf("load program: %w", unix.EPERM), reasonPrivilege},
		{fmt.Errorf("create map: %w", unix.EACCES), reasonPrivilege},
		{fmt.Errorf("attach target: %w", unix.ENOENT), reasonFeature},
		{errors.New("something\nelse"), "eBPF probes disabled: loading the programs failed (something)"},
	}
	for _, tt := range tests {
		err := loadError("loading the programs", tt.err)
		var le *LoadError
		if !errors.As(err, &le) || err.Error() != tt.want || !errors.Is(err, tt.err) {
			t.Errorf("loadError(%v) = %q, want %q wrapping the cause", tt.err, err, tt.want)
		}
		if msg := err.Error(); strings.Contains(msg, "\n") || strings.Count(msg, ". ") > 0 {
			t.Errorf("%q is not one sentence", msg)
		}
	}
}

func TestListeningPorts(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	want := uint32(ln.Addr().(*net.TCPAddr).Port)
	ports, err := listeningPorts(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(ports, want) {
		t.Errorf("listening ports %v miss %d", ports, want)
	}
	if _, err := listeningPorts(1 << 22); err == nil {
		t.Error("no error for a pid that cannot exist")
	}
}

func TestMonoClock(t *testing.T) {
	var c monoClock
	if err := c.measure(); err != nil {
		t.Fatal(err)
	}
	// A monotonic reading taken between two wall-clock readings converts to
	// a time between them, give or take the offset's own uncertainty.
	before := time.Now()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	slack := time.Duration(c.widthNS)
	if got := c.wall(uint64(ts.Nano())); got.Before(before.Add(-slack)) || got.After(after.Add(slack)) {
		t.Errorf("monotonic now converts to %s, outside [%s, %s] ± %s", got, before, after, slack)
	}
	now := time.Now()
	if back := c.wall(c.mono(now)); !back.Equal(now.Round(0)) {
		t.Errorf("round trip %s -> %s", now, back)
	}
}

// The Go mirrors of the C structs must match the compiled object's sizes.
func TestGoMirrorsMatchTheObject(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("the probes are compiled for amd64 only; this is", runtime.GOARCH)
	}
	spec, err := loadProbes()
	if err != nil {
		t.Fatalf("load the embedded object: %v", err)
	}
	for _, tt := range []struct {
		m    string
		size int
	}{{"hists", binary.Size(slotHists{})}, {"timelines", binary.Size(timelineEntry{})}, {"anatomies", binary.Size(anatomyEntry{})},
		{"tracked", 4}, {"ready", 8}, {"ports", 4}} {
		if got := int(spec.Maps[tt.m].ValueSize); got != tt.size {
			t.Errorf("map %s: value size %d in the object, %d in Go", tt.m, got, tt.size)
		}
	}
	if got := int(spec.Maps["tracked"].MaxEntries); got != maxTracked || int(spec.Maps["hists"].MaxEntries) != maxTracked {
		t.Errorf("tracked map holds %d, maxTracked is %d", got, maxTracked)
	}
}

// The engine's Probes interface (router/engine), restated: *Probes must satisfy it.
var _ interface {
	Track(pid int, function, revision string) error
	Untrack(pid int)
	Mark(pid int, phase string, t time.Time)
} = (*Probes)(nil)
