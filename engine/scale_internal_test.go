package engine

import (
	"testing"

	"github.com/pilotlight/pilotlight/functions"
)

// A request's ensureStarting can reserve an instance between the tick's
// count and its reservation; the reservation counts again, so a revision
// with maxScale 1 never gets a second instance from that race (CI saw two
// instances of a minScale = maxScale = 1 revision once).
func TestReserveUpToCountsUnderItsLock(t *testing.T) {
	e := &Engine{}
	m := &functions.Manifest{Name: "f", Revisions: []functions.Revision{{Name: "f-00001"}}}
	r := &revision{fn: m, rev: m.Revisions[0]}
	e.reserve(r) // what ensureStarting did after the tick counted zero
	if got := e.reserveUpTo(r, 1); len(got) != 0 {
		t.Fatalf("reserved %d more with one already starting; want 0", len(got))
	}
	if got := e.reserveUpTo(r, 3); len(got) != 2 {
		t.Fatalf("reserved %d towards 3 with one starting; want 2", len(got))
	}
	r.instances[0].setState(stateDraining) // draining does not count
	if got := e.reserveUpTo(r, 3); len(got) != 1 {
		t.Fatalf("reserved %d towards 3 with two starting and one draining; want 1", len(got))
	}
}

// surplus counts under its lock too: with one instance gone since the tick
// counted two, scaling to one drains nothing.
func TestSurplusCountsUnderItsLock(t *testing.T) {
	e := &Engine{}
	m := &functions.Manifest{Name: "f", Revisions: []functions.Revision{{Name: "f-00001"}}}
	r := &revision{fn: m, rev: m.Revisions[0]}
	busy, idle := e.reserve(r), e.reserve(r)
	busy.setState(stateReady)
	idle.setState(stateReady)
	busy.inflight.Add(3)
	idle.setState(stateStopped) // exited after the tick counted two
	if got := r.surplus(1); len(got) != 0 {
		t.Fatalf("drained %d of one live instance scaling to 1; want 0", len(got))
	}
	idle.setState(stateReady)
	got := r.surplus(1)
	if len(got) != 1 || got[0] != idle || idle.getState() != stateDraining {
		t.Fatalf("scaling two ready to one drained %v; want the idle one, marked draining", got)
	}
}
