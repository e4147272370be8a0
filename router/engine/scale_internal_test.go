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
