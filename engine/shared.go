package engine

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/pilotlight/pilotlight/internal/procmem"
)

// Shared isolation: a revision whose function.yaml says isolation: shared
// (the default for small models) is a slot in a shared runtime process, one
// ONNX Runtime environment holding many revisions' session pools. A slot is
// a Process that borrows its host's pid, address and socket: the
// revision's instances, leases, autoscaler and activator work on it as on a
// dedicated process. Starting a slot loads the revision into a host (a
// running one with room, one made roomy by unloading its least recently
// used idle revisions, or a new one made of a warm-pool process), stopping
// it unloads the sessions and leaves the process running, and the host's
// crash ends every slot it held.

// sourceShared is the cold-start source of a revision loaded into a shared
// process already running: no process start, only sessions.
const sourceShared = "shared"

// Reasons of pilotlight_revision_loads_total and _unloads_total.
const (
	reasonScaleFromZero = "scale_from_zero" // load: the revision had no slot
	reasonScaleUp       = "scale_up"        // load: one more slot
	reasonScaleToZero   = "scale_to_zero"   // unload: the autoscaler went to zero
	reasonScaleDown     = "scale_down"      // unload: fewer slots, not zero
	reasonLRU           = "lru"             // unload: room for another revision
	reasonCrash         = "crash"           // both: the host died (load: the replacement)
	reasonUnreachable   = "unreachable"     // unload: the router could not reach it
	reasonLoadFailed    = "load_failed"     // unload: the load itself failed
	reasonShutdown      = "shutdown"
)

// host is one shared runtime process. Its fields, but ready and err, are
// guarded by the engine's placeMu.
type host struct {
	id    int64
	proc  *Process      // set before ready closes
	ready chan struct{} // closed once proc is running and may load, or err is set
	err   error
	slots []*Process
	// base is the process's RSS before its first revision (an estimate
	// until it is running); charged is what its slots are charged; device
	// is what their sessions are charged on the device (its CUDA context
	// comes on top: processDeviceBytes).
	base, charged, device int64
	// emptySince is when it last came to hold no revision (zero: it holds some).
	emptySince time.Time
}

func (h *host) holds(r *revision) bool {
	return slices.ContainsFunc(h.slots, func(s *Process) bool { return s.owner == r })
}

func (h *host) failed() bool {
	select {
	case <-h.ready:
		return h.err != nil || !h.proc.alive()
	default:
		return false
	}
}

// CapacityError says no runtime process has memory for a revision.
type CapacityError struct {
	Function, Revision string
	Reason             string
}

func (e *CapacityError) Error() string {
	return fmt.Sprintf("revision %s/%s cannot be loaded: %s", e.Function, e.Revision, e.Reason)
}

// memoryCost is what loading the revision is charged: an estimate from its
// model's size (each session holds the weights once: measured, a 33 MiB
// matrix costs 34 MiB a session), or what its latest load added to its
// process's RSS when that is more. The measure alone can be too low: a
// load may reuse pages an unload freed that malloc kept.
func (r *revision) memoryCost() int64 {
	return max(r.measured.Load(), r.modelBytes*int64(r.fn.Runtime.Sessions)+revisionOverhead)
}

// placeShared loads r into a shared process and fills slot with it.
func (e *Engine) placeShared(r *revision, slot *Process) error {
	// A wake right after a scale to zero finds the unload still going: it
	// waits for it (milliseconds) rather than loading beside it, in a new
	// process, or into a process about to unload the revision it asked for.
	e.awaitUnloads(r, slot)
	h, victims, err := e.place(r, slot)
	if err != nil {
		return err
	}
	select {
	case <-h.ready:
	case <-e.ctx.Done():
		return ErrStopped
	}
	if h.err != nil {
		return h.err
	}
	for _, v := range victims { // their memory first
		e.unloadSlot(v, reasonLRU)
	}
	p := h.proc
	slot.mu.Lock()
	if slot.source == "" {
		slot.source = p.source
	}
	slot.pid, slot.addr, slot.port, slot.sock, slot.cmd, slot.exited, slot.started = p.pid, p.addr, p.port, p.sock, p.cmd, p.exited, time.Now()
	slot.mu.Unlock()
	if pr := e.cfg.Probes; pr != nil {
		pr.Mark(slot.pid, "specialise_start", time.Now())
	}
	grew, rep, err := e.specialise(slot, r, true)
	if err != nil {
		return err
	}
	slot.loaded.Store(true)
	if grew > 0 {
		r.measured.Store(grew)
	}
	r.device.Store(rep.DeviceBytes)
	r.deviceKnown.Store(true)
	if cost, device := r.memoryCost(), rep.DeviceBytes; cost != slot.cost || device != slot.device {
		// Charged what the load measured (host) and reported (device):
		// a first load is placed on estimates.
		e.placeMu.Lock()
		if slices.Contains(h.slots, slot) {
			h.charged += cost - slot.cost
			h.device += device - slot.device
			slot.cost, slot.device = cost, device
		}
		e.placeMu.Unlock()
	}
	reason := reasonScaleUp
	r.mu.Lock()
	if r.lostToCrash {
		reason, r.lostToCrash = reasonCrash, false
	} else if len(r.instances) == 1 {
		reason = reasonScaleFromZero
	}
	count(&r.loads, reason)
	r.mu.Unlock()
	e.m.loads.WithLabelValues(r.fn.Name, r.rev.Name, reason).Inc()
	e.log.Info("revision loaded into a shared process", "function", r.fn.Name, "revision", r.rev.Name, "pid", p.pid, "reason", reason, "rss_grew", mib(grew), "charged", mib(slot.cost),
		"provider", rep.Provider, "device", mib(rep.DeviceBytes))
	return nil
}

// awaitUnloads waits (up to DrainTimeout) until no other slot of r is
// being unloaded.
func (e *Engine) awaitUnloads(r *revision, slot *Process) {
	deadline := time.Now().Add(e.cfg.DrainTimeout)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		unloading := slices.ContainsFunc(r.instances, func(in *Process) bool { return in != slot && in.slot && in.stopping.Load() })
		r.mu.Unlock()
		if !unloading {
			return
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// place chooses the host for a new slot of r and charges it there: a
// host with room; else one where unloading least recently used idle
// revisions makes room (returned, already draining, for the caller to
// unload); else a new host within the machine's budget; else a
// CapacityError. A revision has at most one slot per host.
func (e *Engine) place(r *revision, slot *Process) (*host, []*Process, error) {
	perProcess, machine, device := e.cfg.RuntimeMemory, e.cfg.MachineMemory, e.cfg.DeviceMemory
	cost, devCost := r.memoryCost(), r.deviceCost(device)
	fail := func(format string, args ...any) (*host, []*Process, error) {
		return nil, nil, &CapacityError{Function: r.fn.Name, Revision: r.rev.Name, Reason: fmt.Sprintf(format, args...)}
	}
	if cost > perProcess {
		return fail("it needs about %s, more than a shared process may hold (--runtime-memory %s); raise it, or set isolation: dedicated in function.yaml", mib(cost), mib(perProcess))
	}
	e.placeMu.Lock()
	defer e.placeMu.Unlock()
	if e.stopped.Load() {
		return nil, nil, ErrStopped
	}
	free, devUsed := machine-e.machineUsed(), e.deviceUsed()
	for _, h := range e.hosts {
		if !h.holds(r) && !h.failed() && h.charged+cost <= perProcess && cost <= free && deviceFits(device, devUsed, h.device, devCost) {
			e.attach(h, slot, cost, devCost)
			return h, nil, nil
		}
	}
	for _, h := range e.hosts {
		if h.holds(r) || h.failed() {
			continue
		}
		need := max(h.charged+cost-perProcess, cost-free)
		needDev := int64(0) // the device's room, when it has a budget
		if device > 0 {
			needDev = devUsed + deviceExtra(h.device, devCost) - device
		}
		var victims []*Process
		var freed, freedDev int64
		for _, v := range e.idleByLRU(h) {
			if freed >= need && freedDev >= needDev {
				break
			}
			victims = append(victims, v)
			freed += v.cost
			freedDev += v.device
		}
		if freed < need || freedDev < needDev || !claim(victims) {
			continue
		}
		e.log.Info("unloading least recently used revisions for room", "for", r.fn.Name+"/"+r.rev.Name, "pid", victims[0].pid, "need", mib(need), "victims", len(victims), "frees", mib(freed))
		for _, v := range victims {
			// Off the books now, so no other placement counts their memory
			// as free twice; off the host when their unload is done.
			h.charged -= v.cost
			h.device -= v.device
			v.cost, v.device = 0, 0
		}
		e.attach(h, slot, cost, devCost)
		return h, victims, nil
	}
	base := e.hostBase()
	if base+cost > free {
		busy := 0
		for _, h := range e.hosts {
			busy += len(h.slots)
		}
		return fail("the runtime processes' memory budget (%s) is in use: %s free, a new shared process needs about %s; %d revisions are loaded and none that is idle can be unloaded; retry later, or raise --runtime-memory-total",
			mib(machine), mib(max(free, 0)), mib(base+cost), busy)
	}
	if !deviceFits(device, devUsed, 0, devCost) {
		return fail("the device memory budget (%s) is in use: %s free, a new shared process needs about %s there (its sessions' arenas and a CUDA context); retry later, or raise --runtime-device-memory",
			mib(device), mib(max(device-devUsed, 0)), mib(deviceExtra(0, devCost)))
	}
	h := &host{id: e.nextID.Add(1), ready: make(chan struct{}), base: base}
	e.hosts = append(e.hosts, h)
	e.attach(h, slot, cost, devCost)
	go e.startHost(h)
	return h, nil, nil
}

func (e *Engine) attach(h *host, slot *Process, cost, device int64) {
	slot.host, slot.cost, slot.device = h, cost, device
	h.slots = append(h.slots, slot)
	h.charged += cost
	h.device += device
	select {
	case <-h.ready:
		slot.mu.Lock()
		slot.source = sourceShared
		slot.mu.Unlock()
	default: // a new process: the cold start is the pool's or an exec's (placeShared)
	}
}

// detach takes a slot off its host's books (caller holds placeMu); false
// when it was not on them (a crash took it first).
func (e *Engine) detach(slot *Process) bool {
	h := slot.host
	if h == nil {
		return false
	}
	i := slices.Index(h.slots, slot)
	if i < 0 {
		return false
	}
	h.slots = slices.Delete(h.slots, i, i+1)
	h.charged -= slot.cost
	h.device -= slot.device
	return true
}

// idleByLRU lists h's slots that may be unloaded for room, least recently
// used first: ready, nothing in flight or waiting, and not kept loaded by
// minScale or a rollout's hold.
func (e *Engine) idleByLRU(h *host) []*Process {
	now := time.Now()
	var out []*Process
	for _, s := range h.slots {
		r := s.owner
		if s.getState() != stateReady || s.inflight.Load() > 0 || r.waiting.Load() > 0 || r.fn.Scaling.MinScale > 0 {
			continue
		}
		r.mu.Lock()
		held := now.Before(r.floorUntil) && r.floor > 0
		r.mu.Unlock()
		if !held {
			out = append(out, s)
		}
	}
	slices.SortStableFunc(out, func(a, b *Process) int { return cmp.Compare(a.owner.lastActive.Load(), b.owner.lastActive.Load()) })
	return out
}

// claim marks every victim draining if each is still idle, under its
// revision's lock (the one pick takes a request under), so no request
// starts on one after; else it claims none.
func claim(victims []*Process) bool {
	for i, v := range victims {
		r := v.owner
		r.mu.Lock()
		ok := v.getState() == stateReady && v.inflight.Load() == 0
		if ok {
			v.setState(stateDraining)
		}
		r.mu.Unlock()
		if !ok {
			for _, u := range victims[:i] {
				u.owner.mu.Lock()
				u.setState(stateReady)
				u.owner.mu.Unlock()
			}
			return false
		}
	}
	return true
}

// machineUsed is the memory every runtime process holds or is promised
// (caller holds placeMu): shared hosts by their books, the others (dedicated,
// warm pool) by their RSS, and dedicated processes still starting by their
// admission's charge.
func (e *Engine) machineUsed() int64 {
	used := e.pending
	hostPIDs := map[int]bool{}
	for _, h := range e.hosts {
		used += h.base + h.charged
		select {
		case <-h.ready:
			if h.proc != nil {
				hostPIDs[h.proc.pid] = true
			}
		default:
		}
	}
	e.spawnMu.Lock()
	pids := make([]int, 0, len(e.children))
	for pid := range e.children {
		if !hostPIDs[pid] {
			pids = append(pids, pid)
		}
	}
	e.spawnMu.Unlock()
	for _, pid := range pids {
		used += procmem.RSS(pid)
	}
	return used
}

// admitDedicated charges the machine's budget (and the device's, when set)
// for a dedicated process of r about to start (a shared revision is charged by place instead): a
// warm-pool process, already counted by its RSS, adds the revision's
// sessions, a new one its base too. Past the budget it is a CapacityError,
// the shared path's: requests wait (CapacityWait) for memory, then get 503.
// release takes the charge off once the process is ready (its RSS counts
// from then) or failed.
func (e *Engine) admitDedicated(r *revision) (release func(), err error) {
	if r.shared {
		return func() {}, nil
	}
	need := r.memoryCost()
	if e.pool.idleCount() == 0 {
		need += e.hostBase()
	} else if held := e.pool.preloadedFor(r); held > 0 {
		// Its sessions are in a pool process's RSS already (counted).
		need = max(need-held, 0)
	}
	device := e.cfg.DeviceMemory
	needDev := processDeviceBytes(r.deviceCost(device))
	e.placeMu.Lock()
	defer e.placeMu.Unlock()
	refuse := func(format string, args ...any) (func(), error) {
		return func() {}, &CapacityError{Function: r.fn.Name, Revision: r.rev.Name, Reason: fmt.Sprintf(format, args...)}
	}
	if free := e.cfg.MachineMemory - e.machineUsed(); need > free {
		return refuse("the runtime processes' memory budget (%s) is in use: %s free, a dedicated process for it needs about %s; retry later, or raise --runtime-memory-total",
			mib(e.cfg.MachineMemory), mib(max(free, 0)), mib(need))
	}
	if used := e.deviceUsed(); device > 0 && used+needDev > device {
		return refuse("the device memory budget (%s) is in use: %s free, a dedicated process for it needs about %s there (its sessions' arenas and a CUDA context); retry later, or raise --runtime-device-memory",
			mib(device), mib(max(device-used, 0)), mib(needDev))
	}
	e.pending += need
	e.pendingDevice += needDev
	var once sync.Once
	return func() {
		once.Do(func() {
			e.placeMu.Lock()
			e.pending -= need
			e.pendingDevice -= needDev
			e.placeMu.Unlock()
		})
	}, nil
}

// deviceUsed is the device memory every runtime process is charged
// (caller holds placeMu): shared hosts by their books, dedicated processes
// by what their revision's load reported, or their admission's charge
// while they start.
func (e *Engine) deviceUsed() int64 {
	used := e.pendingDevice
	for _, h := range e.hosts {
		used += processDeviceBytes(h.device)
	}
	for _, r := range e.order {
		for _, in := range r.snapshotInstances() {
			if rep := in.loadedAs.Load(); rep != nil && !in.slot && in.alive() {
				used += processDeviceBytes(rep.DeviceBytes)
			}
		}
	}
	return used
}

// hostBase is what a new shared process is charged before it runs: the
// base measured on the latest one, else defaultHostBase.
func (e *Engine) hostBase() int64 {
	if b := e.measuredBase.Load(); b > 0 {
		return b
	}
	return defaultHostBase
}

// startHost makes h's process: a warm-pool process when one is idle, else
// a new generic one; it is shared from its first load.
func (e *Engine) startHost(h *host) {
	p, pre := e.pool.take(nil)
	if p != nil {
		e.pool.refill()
		if pre != nil {
			// Its sessions would count in the base measured below.
			if err := e.dropPreloadCall(p); err != nil {
				e.log.Warn("dropping a warm-pool process's pre-load", "pid", p.pid, "err", err)
			}
		}
	} else {
		p = &Process{id: e.nextID.Add(1), exited: make(chan struct{}), source: sourceExec}
		p.setState(stateStarting)
		p.hosting = h
		if err := e.spawn(p, []string{"--generic", "--listen", "127.0.0.1", "--port", "0"}, childEnv()); err != nil {
			e.hostFailed(h, p, fmt.Errorf("start a shared runtime process: %w", err))
			return
		}
	}
	p.mu.Lock()
	p.hosting = h
	p.mu.Unlock()
	if !p.alive() {
		e.hostFailed(h, p, fmt.Errorf("shared runtime process %d exited before its first load%s", p.pid, p.said()))
		return
	}
	p.setState(stateReady)
	base := procmem.RSS(p.pid)
	e.placeMu.Lock()
	h.proc = p
	if base > 0 {
		h.base = base
		e.measuredBase.Store(base)
	}
	e.placeMu.Unlock()
	e.log.Info("shared runtime process started", "pid", p.pid, "source", p.source, "rss", mib(base))
	close(h.ready)
}

// stopEmptyHosts stops the shared processes that have held no revision for
// EmptyHostLinger, but one: the pilot light of the shared processes. Taken
// off the books under placeMu, a process can get no new placement while it
// stops.
func (e *Engine) stopEmptyHosts(now time.Time) {
	var stop []*Process
	e.placeMu.Lock()
	kept := false
	e.hosts = slices.DeleteFunc(e.hosts, func(h *host) bool {
		select {
		case <-h.ready:
		default:
			return false // still starting: it has a slot waiting for it
		}
		if len(h.slots) > 0 || h.err != nil {
			h.emptySince = time.Time{}
			return false
		}
		if h.emptySince.IsZero() {
			h.emptySince = now
		}
		if !kept || now.Sub(h.emptySince) < e.cfg.EmptyHostLinger || !h.proc.alive() {
			kept = kept || h.proc.alive()
			return false
		}
		stop = append(stop, h.proc)
		return true
	})
	e.placeMu.Unlock()
	for _, p := range stop {
		e.log.Info("stopping a shared runtime process that holds no revision", "pid", p.pid, "empty_for", e.cfg.EmptyHostLinger)
		go e.stopInstance(p, "empty shared process")
	}
}

// hostFailed ends a host that never ran: its slots' starts fail with err.
func (e *Engine) hostFailed(h *host, p *Process, err error) {
	e.placeMu.Lock()
	h.err = err
	e.hosts = slices.DeleteFunc(e.hosts, func(x *host) bool { return x == h })
	h.slots = nil
	e.placeMu.Unlock()
	close(h.ready)
	if p != nil && p.alive() {
		e.stopInstance(p, "shared process failed")
	}
}

// unloadSlot is stopInstance for a slot: no new requests, wait for those
// in flight (up to DrainTimeout), then unload the revision's sessions; the
// process keeps running.
func (e *Engine) unloadSlot(in *Process, why string) {
	in.stopping.Store(true)
	if in.getState() != stateFailed {
		in.setState(stateDraining)
	}
	reason := unloadReason(in, why)
	deadline := time.Now().Add(e.cfg.DrainTimeout)
	for in.inflight.Load() > 0 && time.Now().Before(deadline) && in.alive() {
		time.Sleep(time.Millisecond)
	}
	if in.loaded.Load() && in.alive() && !e.stopped.Load() {
		if err := e.unloadCall(in, reason); err != nil {
			e.log.Warn("unloading a revision from its shared process failed", "function", in.owner.fn.Name, "revision", in.owner.rev.Name, "pid", in.pid, "err", err)
		}
	}
	e.releaseSlot(in, reason, false)
}

func unloadReason(in *Process, why string) string {
	switch why {
	case reasonLRU, reasonLoadFailed, reasonUnreachable, reasonShutdown:
		return why
	case "scale down":
		in.owner.mu.Lock()
		defer in.owner.mu.Unlock()
		if in.owner.desired == 0 {
			return reasonScaleToZero
		}
		return reasonScaleDown
	case "start failed":
		return reasonLoadFailed
	}
	return why
}

// releaseSlot takes a slot off its host and its revision, counting the
// unload once (a crash and an unload may race for it).
func (e *Engine) releaseSlot(in *Process, reason string, crashed bool) {
	e.placeMu.Lock()
	ok := e.detach(in)
	e.placeMu.Unlock()
	if !ok {
		return
	}
	r := in.owner
	fn, rev := r.fn.Name, r.rev.Name
	r.mu.Lock()
	if crashed {
		in.setState(stateFailed)
		e.m.exits.WithLabelValues(fn, rev, exitCrashed).Inc()
		r.lostToCrash = true
	} else {
		in.setState(stateStopped)
	}
	if in.loaded.Load() || crashed {
		e.m.unloads.WithLabelValues(fn, rev, reason).Inc()
		count(&r.unloads, reason)
	}
	r.mu.Unlock()
	e.log.Info("revision unloaded from its shared process", "function", fn, "revision", rev, "pid", in.pid, "reason", reason)
	r.remove(in)
	if r.waiting.Load() > 0 {
		r.queue.Release(-1) // held requests go back through Acquire: a new placement
	}
}

// hostExited runs when a shared process ends: every revision it held loses
// its slot (a crash unless the engine stopped it).
func (e *Engine) hostExited(h *host, p *Process, err error) {
	crashed := !p.stopping.Load()
	e.placeMu.Lock()
	e.hosts = slices.DeleteFunc(e.hosts, func(x *host) bool { return x == h })
	slots := slices.Clone(h.slots)
	e.placeMu.Unlock()
	if crashed {
		e.log.Error("shared runtime process exited unexpectedly; its revisions are loaded elsewhere when needed", "pid", p.pid, "revisions", len(slots), "err", errString(err))
	} else {
		e.log.Info("shared runtime process stopped", "pid", p.pid)
	}
	for _, s := range slots {
		reason := reasonShutdown
		if crashed {
			reason = reasonCrash
		}
		e.releaseSlot(s, reason, crashed)
	}
}

// specialise asks a generic process to load r's model (shared: as one of
// many); it returns how much the load grew the process's RSS, and what the
// process said of the sessions it made (kept on in).
func (e *Engine) specialise(in *Process, r *revision, shared bool) (int64, loadReport, error) {
	body, _ := json.Marshal(map[string]any{"function_dir": r.dir, "revision": r.rev.Name, "shared": shared})
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.StartTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+in.addr+"/admin/specialise", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := controlClient.Do(req)
	if err != nil {
		return 0, loadReport{}, fmt.Errorf("load %s/%s into runtime process %d: %w", r.fn.Name, r.rev.Name, in.pid, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return 0, loadReport{}, fmt.Errorf("load %s/%s into runtime process %d: %s: %s", r.fn.Name, r.rev.Name, in.pid, resp.Status, bytes.TrimSpace(msg))
	}
	var ans struct {
		Before int64 `json:"rss_before_bytes"`
		After  int64 `json:"rss_bytes"`
		loadReport
	}
	_ = json.Unmarshal(msg, &ans)
	in.loadedAs.Store(&ans.loadReport)
	return ans.After - ans.Before, ans.loadReport, nil
}

// unloadCall asks a shared process to release a revision's sessions.
func (e *Engine) unloadCall(in *Process, reason string) error {
	body, _ := json.Marshal(map[string]string{"revision": in.owner.rev.Name, "reason": reason})
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.DrainTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+in.addr+"/admin/unload", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := controlClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// controlClient carries load and unload calls: kept-alive connections (a
// wake is one call), no timeout of its own (each call has its context's).
var controlClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4, IdleConnTimeout: 30 * time.Second}}

// ProcessView is one runtime process and the revisions it holds, for
// GET /admin/functions and the console.
type ProcessView struct {
	PID       int    `json:"pid"`
	Isolation string `json:"isolation"` // shared | dedicated | pool
	State     string `json:"state"`
	RSSBytes  int64  `json:"rss_bytes"`
	Budget    int64  `json:"budget_bytes,omitempty"` // shared: what its sessions may hold
	Charged   int64  `json:"charged_bytes,omitempty"`
	// DeviceBytes is what the process is charged on the device: its
	// sessions' arena limits and one CUDA context when any got the CUDA
	// provider, 0 when all run on the CPU.
	DeviceBytes int64          `json:"device_bytes"`
	Revisions   []RevisionSlot `json:"revisions"`
}

// RevisionSlot is a revision held by a process.
type RevisionSlot struct {
	Function string `json:"function"`
	Revision string `json:"revision"`
	State    string `json:"state"`
	Inflight int64  `json:"inflight"`
	// HostBytes is what the revision is charged in a shared process's
	// memory; DeviceBytes what its sessions may hold on the device (0 on
	// the CPU), Provider the execution provider they got and
	// ProviderReason why.
	HostBytes      int64  `json:"host_bytes,omitempty"`
	DeviceBytes    int64  `json:"device_bytes"`
	Provider       string `json:"provider,omitempty"`
	ProviderReason string `json:"provider_reason,omitempty"`
	// LastActive is the revision's latest request (LRU order).
	LastActive time.Time `json:"last_active,omitzero"`
}

// Processes lists every runtime process: shared ones with the revisions
// they hold, dedicated ones with theirs, and the warm pool's idle ones.
func (e *Engine) Processes() []ProcessView {
	var out []ProcessView
	e.placeMu.Lock()
	for _, h := range e.hosts {
		v := ProcessView{Isolation: "shared", State: "starting", Budget: e.cfg.RuntimeMemory, Charged: h.charged, DeviceBytes: processDeviceBytes(h.device), Revisions: []RevisionSlot{}}
		select {
		case <-h.ready:
			if h.proc != nil {
				v.PID, v.State = h.proc.pid, "ready"
			}
		default:
		}
		for _, s := range h.slots {
			v.Revisions = append(v.Revisions, withProvider(RevisionSlot{Function: s.owner.fn.Name, Revision: s.owner.rev.Name, State: s.getState().String(),
				Inflight: s.inflight.Load(), HostBytes: s.cost, LastActive: s.owner.lastActiveTime()}, s))
		}
		out = append(out, v)
	}
	e.placeMu.Unlock()
	for _, r := range e.order {
		for _, in := range r.snapshotInstances() {
			if in.slot {
				continue
			}
			slot := withProvider(RevisionSlot{Function: r.fn.Name, Revision: r.rev.Name, State: in.getState().String(), Inflight: in.inflight.Load(), LastActive: r.lastActiveTime()}, in)
			out = append(out, ProcessView{PID: in.pid, Isolation: "dedicated", State: in.getState().String(), DeviceBytes: processDeviceBytes(slot.DeviceBytes), Revisions: []RevisionSlot{slot}})
		}
	}
	for _, p := range e.pool.status() {
		out = append(out, ProcessView{PID: p.PID, Isolation: "pool", State: p.State, Revisions: []RevisionSlot{}})
	}
	for i := range out {
		if out[i].PID > 0 {
			out[i].RSSBytes = procmem.RSS(out[i].PID)
		}
	}
	return out
}

// withProvider adds what in's process said of the revision's sessions
// (nothing until its load answered).
func withProvider(rs RevisionSlot, in *Process) RevisionSlot {
	if rep := in.loadedAs.Load(); rep != nil {
		rs.Provider, rs.ProviderReason, rs.DeviceBytes = rep.Provider, rep.ProviderReason, rep.DeviceBytes
	}
	return rs
}
