package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"
)

// Pre-loading (Config.Preload). Specialising a warm-pool process is mostly
// creating and warming the revision's sessions (4 of the 5.9 ms from
// specialise to ready, bench ebpf). The revision most likely to wake next is
// the one most recently scaled to zero, so each idle pool process pre-loads
// one of the pool-size dedicated revisions most recently scaled to zero,
// newest first, while nothing waits (runtime/server's POST /admin/preload).
// Specialising a process to the revision it pre-loaded skips the sessions;
// any other revision (or a shared process) takes a process that pre-loaded
// nothing when there is one, else drops the pre-load first and loads as
// without it. A pre-load is charged to the machine's budget as a start is
// (pending while it loads, the process's RSS once built), is never made past
// that budget, and is dropped when a start finds the budget full.

// Paths of a specialisation (pilotlight_warm_pool_specialisations_total,
// ColdStart.Preload): the runtime's answer, or "none".
const (
	preloadPathHit     = "hit"     // its sessions were pre-loaded: none created
	preloadPathJoined  = "joined"  // its pre-load was running: waited for, not restarted
	preloadPathDropped = "dropped" // another revision's pre-load dropped first
	preloadPathNone    = "none"
)

// Outcomes of pre-loads (pilotlight_warm_pool_preloads_total).
const (
	preloadLoaded  = "loaded"  // sessions built and held
	preloadSkipped = "skipped" // no room in the machine's budget
	preloadFailed  = "failed"  // the load failed (the revision's own start will say why)
)

// preloadState is what an idle pool process pre-loads (guarded by the
// pool's mu).
type preloadState struct {
	r     *revision
	ready bool  // its sessions are built
	bytes int64 // what they added to the process's RSS, once ready
}

// PreloadStatus is an idle pool process's pre-load in PoolStatus.
type PreloadStatus struct {
	Function string `json:"function"`
	Revision string `json:"revision"`
	// State is loading or ready.
	State string `json:"state"`
	// Bytes is what the sessions added to the process's RSS (ready only):
	// charged to the machine's budget with the process's RSS.
	Bytes int64 `json:"bytes,omitempty"`
}

func (st *preloadState) view() *PreloadStatus {
	if st == nil {
		return nil
	}
	v := &PreloadStatus{Function: st.r.fn.Name, Revision: st.r.rev.Name, State: "loading"}
	if st.ready {
		v.State, v.Bytes = "ready", st.bytes
	}
	return v
}

// wentToZero records that r scaled to zero: its sessions are the likeliest
// to be wanted next.
func (p *warmPool) wentToZero(r *revision) {
	if !p.preload || r.shared {
		return
	}
	p.mu.Lock()
	p.recent = slices.DeleteFunc(p.recent, func(x *revision) bool { return x == r })
	p.recent = slices.Insert(p.recent, 0, r)
	if len(p.recent) > p.size {
		p.recent = p.recent[:p.size]
	}
	p.mu.Unlock()
	p.assignPreloads()
}

// assignPreloads gives each recent revision at zero that no idle process
// pre-loads one: a process that pre-loads nothing, else one that pre-loads
// a revision no longer wanted (awake again, or pushed out of recent).
func (p *warmPool) assignPreloads() {
	if !p.preload || p.e.stopped.Load() {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	wanted := func(r *revision) bool {
		return slices.Contains(p.recent, r) && r.atZero()
	}
	for _, r := range p.recent {
		if !r.atZero() || slices.ContainsFunc(p.idle, func(in *Process) bool { return in.preload != nil && in.preload.r == r }) {
			continue
		}
		i := slices.IndexFunc(p.idle, func(in *Process) bool { return in.preload == nil })
		if i < 0 {
			i = slices.IndexFunc(p.idle, func(in *Process) bool { return !wanted(in.preload.r) })
		}
		if i < 0 {
			return
		}
		in := p.idle[i]
		st := &preloadState{r: r}
		in.preload = st // a newer pre-load replaces an older one in the process too
		go p.e.preloadInto(in, st)
	}
	p.e.m.preloadedBytes.Set(float64(p.preloadedBytesLocked()))
}

// atZero says the revision has no instance starting, ready or draining.
func (r *revision) atZero() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.instances) == 0
}

// preloadedBytesLocked is what the idle processes' built pre-loads hold
// (caller holds mu).
func (p *warmPool) preloadedBytesLocked() int64 {
	var n int64
	for _, in := range p.idle {
		if in.preload != nil && in.preload.ready {
			n += in.preload.bytes
		}
	}
	return n
}

// preloadedFor is what an idle process's built pre-load of r holds (0: none).
func (p *warmPool) preloadedFor(r *revision) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, in := range p.idle {
		if in.preload != nil && in.preload.r == r && in.preload.ready {
			return in.preload.bytes
		}
	}
	return 0
}

// dropPreloads drops every idle process's pre-load (a start found the
// machine's budget full) and says whether there was any.
func (p *warmPool) dropPreloads() bool {
	p.mu.Lock()
	var procs []*Process
	for _, in := range p.idle {
		if in.preload != nil {
			in.preload = nil
			procs = append(procs, in)
		}
	}
	p.e.m.preloadedBytes.Set(0)
	p.mu.Unlock()
	for _, in := range procs {
		if err := p.e.dropPreloadCall(in); err != nil {
			p.e.log.Warn("dropping a warm-pool process's pre-load", "pid", in.pid, "err", err)
		}
	}
	return len(procs) > 0
}

// preloadInto asks in to pre-load st's revision, charged to the machine's
// budget while it loads, and records the outcome.
func (e *Engine) preloadInto(in *Process, st *preloadState) {
	// One call at a time per process, and only the latest assigned: two
	// calls racing there could arrive newest first, the older then
	// replacing the newer in the process while the engine books the newer
	// as failed (seen in bench coldstart: the pre-load lost, the process
	// holding one nobody knew of).
	in.preloadCalls.Lock()
	defer in.preloadCalls.Unlock()
	e.pool.mu.Lock()
	current := in.preload == st
	e.pool.mu.Unlock()
	if !current { // replaced, or taken by a start: not to be made
		return
	}
	r := st.r
	fn, rev := r.fn.Name, r.rev.Name
	cost := r.memoryCost()
	e.placeMu.Lock()
	free := e.cfg.MachineMemory - e.machineUsed()
	if cost > free {
		e.placeMu.Unlock()
		e.log.Info("no room in the machine's budget to pre-load; the revision will load when it wakes", "function", fn, "revision", rev,
			"needs", mib(cost), "free", mib(max(free, 0)))
		e.m.preloads.WithLabelValues(fn, rev, preloadSkipped).Inc()
		e.pool.mu.Lock()
		if in.preload == st {
			in.preload = nil
		}
		e.pool.mu.Unlock()
		return
	}
	e.pending += cost
	e.placeMu.Unlock()
	var once sync.Once
	release := func() {
		once.Do(func() {
			e.placeMu.Lock()
			e.pending -= cost
			e.placeMu.Unlock()
		})
	}
	defer release()
	grew, err := e.preloadCall(in, r)
	release() // built: the process's RSS counts it from here
	e.pool.mu.Lock()
	mine := in.preload == st
	switch {
	case !mine:
		// Taken by a start, or replaced by a newer pre-load: its answer
		// (a 409 when dropped) is that path's to report.
	case err != nil:
		in.preload = nil
	default:
		st.ready, st.bytes = true, grew
	}
	e.m.preloadedBytes.Set(float64(e.pool.preloadedBytesLocked()))
	e.pool.mu.Unlock()
	switch {
	case !mine:
	case err != nil:
		e.m.preloads.WithLabelValues(fn, rev, preloadFailed).Inc()
		e.log.Warn("pre-load failed; the revision will load when it wakes", "function", fn, "revision", rev, "pid", in.pid, "err", err)
	default:
		e.m.preloads.WithLabelValues(fn, rev, preloadLoaded).Inc()
		e.log.Info("warm-pool process pre-loaded the revision most recently scaled to zero", "function", fn, "revision", rev, "pid", in.pid, "rss_added", mib(grew))
	}
}

// preloadCall asks an idle pool process to pre-load r; it answers once the
// sessions are warm, with what they added to its RSS.
func (e *Engine) preloadCall(in *Process, r *revision) (int64, error) {
	body, _ := json.Marshal(map[string]string{"function_dir": r.dir, "revision": r.rev.Name})
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.StartTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+in.addr+"/admin/preload", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := controlClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	var ans struct {
		Before int64 `json:"rss_before_bytes"`
		After  int64 `json:"rss_bytes"`
	}
	_ = json.Unmarshal(msg, &ans)
	return max(ans.After-ans.Before, 0), nil
}

// dropPreloadCall asks a pool process to drop what it pre-loaded.
func (e *Engine) dropPreloadCall(in *Process) error {
	ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodDelete, "http://"+in.addr+"/admin/preload", nil)
	resp, err := controlClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s", resp.Status)
	}
	return nil
}
