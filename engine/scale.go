package engine

import (
	"fmt"
	"sort"
	"time"
)

// tick feeds every revision's autoscaler and acts on its decision: start
// instances up to the desired count, drain the surplus.
func (e *Engine) tick(now time.Time) {
	if e.stopped.Load() {
		return
	}
	e.stopEmptyHosts(now)
	for _, r := range e.order {
		queued := r.queue.Len()
		inflight := r.inflight()
		conc := float64(inflight) + float64(queued)
		if conc > 0 {
			r.touch(now)
		}
		r.scaler.Record(now, conc)
		c := r.counts()
		current := c[stateStarting] + c[stateReady]
		d := r.scaler.Scale(now, current, r.lastActiveTime())
		r.mu.Lock()
		if now.Before(r.floorUntil) && d.Desired < r.floor {
			d.Desired, d.Reason = r.floor, "held by a rollout"
		}
		if d.Desired != r.desired {
			e.log.Info("autoscaler decision", "function", r.fn.Name, "revision", r.rev.Name, "current", current, "desired", d.Desired, "panic", d.Panic, "reason", d.Reason)
		}
		r.desired, r.decision = d.Desired, d
		blocked := now.Before(r.retryAfter)
		r.mu.Unlock()

		fn, rev := r.fn.Name, r.rev.Name
		e.m.desired.WithLabelValues(fn, rev).Set(float64(d.Desired))
		e.m.queueDepth.WithLabelValues(fn, rev).Set(float64(queued))
		for _, s := range []state{stateStarting, stateReady, stateDraining} {
			e.m.instances.WithLabelValues(fn, rev, s.String()).Set(float64(c[s]))
		}

		switch {
		case d.Desired > current && !blocked:
			for _, in := range e.reserveUpTo(r, d.Desired) {
				go e.start(r, in, time.Time{})
			}
		case d.Desired < current:
			for _, in := range r.surplus(d.Desired) {
				go func() {
					e.stopInstance(in, "scale down")
				}()
			}
		}
	}
}

// reserveUpTo reserves the instances the revision lacks to have desired
// starting or ready. It counts under the same lock it reserves under: a
// request's ensureStarting may have reserved one since the tick counted,
// and counting again keeps maxScale = 1 at one instance.
func (e *Engine) reserveUpTo(r *revision, desired int) []*Process {
	r.mu.Lock()
	defer r.mu.Unlock()
	current := 0
	for _, in := range r.instances {
		if s := in.getState(); s == stateStarting || s == stateReady {
			current++
		}
	}
	var slots []*Process
	for ; current < desired; current++ {
		slots = append(slots, e.reserve(r))
	}
	return slots
}

// surplus marks draining, and returns, the instances beyond desired
// starting or ready: the ready ones with the fewest requests in flight
// (one still starting finishes and serves the next burst). It counts under
// the lock it marks under, as reserveUpTo does, so an instance that exited
// since the tick counted is not replaced by draining a live one.
func (r *revision) surplus(desired int) []*Process {
	r.mu.Lock()
	defer r.mu.Unlock()
	current := 0
	var cands []*Process
	for _, in := range r.instances {
		switch in.getState() {
		case stateStarting:
			current++
		case stateReady:
			current++
			cands = append(cands, in)
		}
	}
	sort.SliceStable(cands, func(i, j int) bool { return cands[i].inflight.Load() < cands[j].inflight.Load() })
	n := min(max(current-desired, 0), len(cands))
	for _, in := range cands[:n] {
		in.setState(stateDraining)
	}
	return cands[:n]
}

// Hold keeps at least n instances of a revision running (started now if
// need be) until until, whatever the autoscaler says; a later Hold replaces
// it. The rollout controller pre-scales a blue-green candidate with it and
// keeps the previous revision warm for an instant undo.
func (e *Engine) Hold(function, revision string, n int, until time.Time) error {
	r, ok := e.revs[revKey{function, revision}]
	if !ok {
		return fmt.Errorf("%w %s/%s", ErrUnknownRevision, function, revision)
	}
	if maxScale := r.fn.Scaling.MaxScale; maxScale > 0 && n > maxScale {
		n = maxScale
	}
	r.mu.Lock()
	r.floor, r.floorUntil = n, until
	r.mu.Unlock()
	return nil
}

// ReadyInstances counts a revision's ready instances.
func (e *Engine) ReadyInstances(function, revision string) int {
	r, ok := e.revs[revKey{function, revision}]
	if !ok {
		return 0
	}
	return r.counts()[stateReady]
}
