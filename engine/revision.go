package engine

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/pilotlight/pilotlight/engine/activator"
	"github.com/pilotlight/pilotlight/engine/autoscaler"
	"github.com/pilotlight/pilotlight/functions"
)

// revision is one revision's instances, activator queue and autoscaler.
type revision struct {
	fn     *functions.Manifest
	rev    functions.Revision
	dir    string // absolute function directory
	queue  *activator.Queue
	scaler *autoscaler.Autoscaler
	// shared: the revision's instances are slots in shared runtime processes.
	shared     bool
	modelBytes int64        // its model file's size, for the first memory estimate
	measured   atomic.Int64 // what its latest load added to its process's RSS
	// device is the device memory its latest load's sessions may hold (0
	// on the CPU), once deviceKnown: what its next load is charged there.
	device      atomic.Int64
	deviceKnown atomic.Bool

	waiting    atomic.Int64 // requests inside Acquire's wait
	lastActive atomic.Int64 // unix nanos of the last request seen

	mu         sync.Mutex
	instances  []*Process
	rr         uint64
	desired    int
	decision   autoscaler.Decision
	lastCold   *ColdStart
	startErr   error
	startErrAt time.Time
	retryAfter time.Time
	// floor keeps at least floor instances until floorUntil (Hold): a
	// rollout pre-scales a candidate and keeps the previous revision warm.
	floor      int
	floorUntil time.Time
	// lostToCrash: a shared process crashed under it; its next load is counted as the crash's.
	lostToCrash bool
	// loads and unloads count the revision's loads into and unloads from
	// shared processes by reason, for the admin view and the console.
	loads, unloads map[string]int
}

// count adds one to m[reason] (caller holds r.mu).
func count(m *map[string]int, reason string) {
	if *m == nil {
		*m = map[string]int{}
	}
	(*m)[reason]++
}

// deviceCost is what loading r is charged on the device: what its latest
// load's sessions may hold (0 on the CPU). Before its first load, with a
// device budget set (there is a GPU), it is what they would hold on CUDA
// unless function.yaml asks for the CPU: charged high once rather than
// past the budget.
func (r *revision) deviceCost(budget int64) int64 {
	if r.deviceKnown.Load() {
		return r.device.Load()
	}
	if budget > 0 && r.fn.Runtime.Provider != "cpu" {
		return r.fn.DeviceBytesOf(r.rev)
	}
	return 0
}

func (r *revision) touch(now time.Time) { r.lastActive.Store(now.UnixNano()) }

// desiredCount is the autoscaler's latest desired instance count.
func (r *revision) desiredCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.desired
}

// responded marks the first response of the latest cold start, once. The
// record is replaced, not changed: Statuses hands out the pointer.
func (r *revision) responded(pid int, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.lastCold; c != nil && c.PID == pid && c.FirstResponse.IsZero() {
		cp := *c
		cp.FirstResponse = at
		r.lastCold = &cp
	}
}

func (r *revision) lastActiveTime() time.Time {
	n := r.lastActive.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// pick takes the ready instance with the fewest requests in flight (round
// robin among equals) and counts the new request against it, respecting
// containerConcurrency when it is set.
func (r *revision) pick() *Process {
	r.mu.Lock()
	defer r.mu.Unlock()
	limit := int64(r.fn.Scaling.ContainerConcurrency)
	var best *Process
	n := len(r.instances)
	r.rr++
	for i := 0; i < n; i++ {
		in := r.instances[(int(r.rr)+i)%n]
		if in.getState() != stateReady {
			continue
		}
		f := in.inflight.Load()
		if limit > 0 && f >= limit {
			continue
		}
		if best == nil || f < best.inflight.Load() {
			best = in
		}
	}
	if best != nil {
		best.inflight.Add(1)
	}
	return best
}

func (r *revision) snapshotInstances() []*Process {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*Process(nil), r.instances...)
}

func (r *revision) remove(in *Process) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, x := range r.instances {
		if x == in {
			r.instances = append(r.instances[:i], r.instances[i+1:]...)
			return
		}
	}
}

// recentStartError is the last start failure while no instance is ready, so
// held requests fail with the reason instead of waiting out their timeout.
func (r *revision) recentStartError() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.startErr == nil || time.Since(r.startErrAt) > startRetryBackoff {
		return nil
	}
	for _, in := range r.instances {
		if in.getState() == stateReady {
			return nil
		}
	}
	return r.startErr
}

// counts returns instances by state.
func (r *revision) counts() map[state]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := map[state]int{}
	for _, in := range r.instances {
		c[in.getState()]++
	}
	return c
}

func (r *revision) inflight() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var n int64
	for _, in := range r.instances {
		n += in.inflight.Load()
	}
	return n
}
