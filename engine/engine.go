// Package engine is the local engine behind the router on one machine: it
// starts each instance as a child process (pilotlight-runtime), keeps a
// pilot light of pre-started generic processes to specialise on demand,
// supervises them (readiness, logs, exits, crash replacement), holds requests
// in the activator while a revision scales from zero, and acts on the
// autoscaler's decisions. Knative does all of this in a cluster; here it is
// one process's children.
package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/engine/activator"
	"github.com/pilotlight/pilotlight/engine/autoscaler"
	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/listener"
)

// Defaults for Config's zero fields.
const (
	DefaultPoolSize      = 1
	DefaultQueueCapacity = 256
	DefaultStartTimeout  = 60 * time.Second
	DefaultDrainTimeout  = 30 * time.Second
	DefaultTickInterval  = 100 * time.Millisecond
	DefaultCapacityWait  = 5 * time.Second
	// DefaultEmptyHostLinger is how long a shared process that holds no
	// revision is kept beyond the first such one (see EmptyHostLinger).
	DefaultEmptyHostLinger = 30 * time.Second
	// DefaultLivenessInterval is how often ready instances are asked GET
	// /v2/health/live; livenessFailures answers missed in a row mean hung.
	DefaultLivenessInterval = 5 * time.Second
	livenessFailures        = 3
	// startRetryBackoff spaces restarts of a revision whose instances fail to start.
	startRetryBackoff = 2 * time.Second
)

// Probes receives the pids the engine starts, so kernel events can be
// attributed to function and revision (the eBPF probes satisfy it).
type Probes interface {
	Track(pid int, function, revision string) error
	Untrack(pid int)
	Mark(pid int, phase string, t time.Time)
}

// revKey finds a revision: a struct, not "function/revision", so the
// lookup on every request builds no string (the concatenation cost about
// 7% of the router's CPU under gRPC load).
type revKey struct{ function, revision string }

// Config configures the engine.
type Config struct {
	Binary    string // the pilotlight-runtime executable instances run (listener.RuntimeBinary)
	Functions []*functions.Manifest
	// PoolSize is how many generic runtime processes stay pre-started (0 disables the pilot light).
	PoolSize int
	// ScaleToZeroAfter, when > 0, overrides every function's
	// scaling.scaleToZeroAfter; min and max scale always come from function.yaml.
	ScaleToZeroAfter time.Duration
	QueueCapacity    int
	StartTimeout     time.Duration
	DrainTimeout     time.Duration
	TickInterval     time.Duration
	LivenessInterval time.Duration
	StableWindow     time.Duration
	PanicWindow      time.Duration
	Logger           *slog.Logger
	Registerer       prometheus.Registerer
	Probes           Probes
	// HTTPOnly leaves instances without the router's framed Unix socket
	// (package frame), so the router reaches them over HTTP on their port;
	// every revision is then dedicated (a frame names a shared revision).
	HTTPOnly bool
	// Isolation, when set (shared or dedicated), overrides every
	// function's isolation.
	Isolation string
	// RuntimeMemory bounds what one shared runtime process's sessions may
	// hold (bytes); MachineMemory bounds every runtime process together.
	// 0: DefaultMemoryBudgets, sized from the machine.
	RuntimeMemory, MachineMemory int64
	// DeviceMemory bounds what every runtime process together is charged
	// on the CUDA device (sessions' arena limits, a context per process);
	// 0: no bound (the engine does not measure the device).
	DeviceMemory int64
	// CapacityWait is how long a request for a revision that fits in no
	// process, or whose dedicated process the machine's budget has no
	// room for, waits for memory before it is refused (503).
	CapacityWait time.Duration
	// EmptyHostLinger is how long a shared process that holds no revision
	// stays when another empty one is running: one empty shared process is
	// kept (a wake loads into it without a process start, as into a warm
	// pool process), the others stop after this, so a burst that needed
	// several leaves one behind, not all of them.
	EmptyHostLinger time.Duration
	// Preload has idle warm-pool processes pre-load the sessions of the
	// dedicated revisions most recently scaled to zero (preload.go), so
	// the next wake of one skips creating and warming them.
	Preload bool
}

// Errors Acquire returns; the router maps them to statuses.
var (
	ErrUnknownRevision = errors.New("unknown revision")
	ErrQueueFull       = activator.ErrQueueFull
	ErrStopped         = errors.New("engine stopped")
)

// StartError says a revision could not start an instance.
type StartError struct {
	Function, Revision string
	Err                error
}

func (e *StartError) Error() string {
	return fmt.Sprintf("revision %s/%s failed to start: %v", e.Function, e.Revision, e.Err)
}
func (e *StartError) Unwrap() error { return e.Err }

// Engine runs instances for every revision of every function it was given.
type Engine struct {
	cfg     Config
	log     *slog.Logger
	m       *metrics
	revs    map[revKey]*revision
	order   []*revision
	pool    *warmPool
	stopped atomic.Bool
	ctx     context.Context // ends when Run's context ends
	cancel  context.CancelFunc
	wg      sync.WaitGroup // instance goroutines
	// spawnMu orders wg.Add in spawn against shutdown's wg.Wait, and guards children.
	spawnMu  sync.Mutex
	children map[int]*os.Process
	nextID   atomic.Int64
	// placeMu guards the shared processes (hosts) and their books.
	placeMu      sync.Mutex
	hosts        []*host
	measuredBase atomic.Int64 // a shared process's RSS before its first load, as last measured
	// pending and pendingDevice are what dedicated processes still
	// starting are charged (admitDedicated).
	pending, pendingDevice int64
	// sockDir holds the instances' framed sockets, named by process id ("" : HTTPOnly).
	sockDir string
}

// New checks the configuration and builds an engine; Run starts it.
func New(cfg Config) (*Engine, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.Binary == "" {
		return nil, fmt.Errorf("the engine needs the %s executable its instances run (make build puts it in bin/)", listener.RuntimeBinary)
	}
	if cfg.PoolSize < 0 {
		return nil, fmt.Errorf("pool size %d: must be >= 0", cfg.PoolSize)
	}
	if cfg.QueueCapacity <= 0 {
		cfg.QueueCapacity = DefaultQueueCapacity
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	if cfg.LivenessInterval <= 0 {
		cfg.LivenessInterval = DefaultLivenessInterval
	}
	if cfg.TickInterval <= 0 {
		cfg.TickInterval = DefaultTickInterval
	}
	if cfg.CapacityWait <= 0 {
		cfg.CapacityWait = DefaultCapacityWait
	}
	if cfg.EmptyHostLinger <= 0 {
		cfg.EmptyHostLinger = DefaultEmptyHostLinger
	}
	switch cfg.Isolation {
	case "", functions.IsolationShared, functions.IsolationDedicated:
	default:
		return nil, fmt.Errorf("isolation %q: must be shared or dedicated", cfg.Isolation)
	}
	perProcess, machine := DefaultMemoryBudgets()
	cfg.RuntimeMemory = cmp.Or(max(cfg.RuntimeMemory, 0), perProcess)
	cfg.MachineMemory = cmp.Or(max(cfg.MachineMemory, 0), machine)
	e := &Engine{cfg: cfg, log: cfg.Logger, revs: map[revKey]*revision{}, children: map[int]*os.Process{}}
	if !cfg.HTTPOnly {
		// One directory (0700) for every instance's socket, removed at shutdown.
		dir, err := os.MkdirTemp("", "pilotlight-sockets-")
		if err != nil {
			return nil, fmt.Errorf("create the instances' socket directory: %w", err)
		}
		e.sockDir = dir
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.m = newMetrics(cfg.Registerer)
	e.pool = newWarmPool(e, cfg.PoolSize, cfg.Preload)
	for _, fn := range cfg.Functions {
		dir, err := filepath.Abs(fn.Dir)
		if err != nil {
			return nil, err
		}
		for _, rv := range fn.Revisions {
			sc := fn.Scaling
			if cfg.ScaleToZeroAfter > 0 {
				sc.ScaleToZeroAfter = cfg.ScaleToZeroAfter
			}
			as := autoscaler.New(autoscaler.Config{
				TargetConcurrency: float64(sc.TargetConcurrency),
				MinScale:          sc.MinScale,
				MaxScale:          sc.MaxScale,
				StableWindow:      cfg.StableWindow,
				PanicWindow:       cfg.PanicWindow,
				ScaleToZeroAfter:  sc.ScaleToZeroAfter,
			})
			r := &revision{fn: fn, rev: rv, dir: dir, queue: activator.New(cfg.QueueCapacity), scaler: as}
			r.shared = cmp.Or(cfg.Isolation, fn.IsolationOf(rv)) == functions.IsolationShared && !cfg.HTTPOnly
			if fi, err := os.Stat(fn.ModelPath(rv)); err == nil {
				r.modelBytes = fi.Size()
			}
			e.m.known(fn.Name, rv.Name)
			e.revs[revKey{fn.Name, rv.Name}] = r
			e.order = append(e.order, r)
		}
	}
	return e, nil
}

// Run starts the warm pool and every revision's minimum instances, runs the
// autoscaler until ctx ends, then stops every child process (drained) and returns.
func (e *Engine) Run(ctx context.Context) error {
	e.pool.fill()
	ticker := time.NewTicker(e.cfg.TickInterval)
	defer ticker.Stop()
	live := time.NewTicker(e.cfg.LivenessInterval)
	defer live.Stop()
	e.tick(time.Now())
	for {
		select {
		case <-ctx.Done():
			e.cancel()
			e.shutdown()
			return nil
		case now := <-ticker.C:
			e.tick(now)
		case <-live.C:
			e.checkLiveness()
		}
	}
}

// shutdown drains and stops every instance and pool process, and waits for them.
func (e *Engine) shutdown() {
	e.spawnMu.Lock()
	e.stopped.Store(true)
	e.spawnMu.Unlock()
	e.log.Info("stopping every instance")
	var wg sync.WaitGroup
	for _, r := range e.order {
		r.queue.Release(-1) // held requests see ErrStopped
		for _, in := range r.snapshotInstances() {
			wg.Add(1)
			go func(in *Process) { defer wg.Done(); e.stopInstance(in, "shutdown") }(in)
		}
	}
	for _, in := range e.pool.drainAll() {
		wg.Add(1)
		go func(in *Process) { defer wg.Done(); e.stopInstance(in, "shutdown") }(in)
	}
	wg.Wait() // the slots first: their hosts stop once empty
	e.placeMu.Lock()
	var hosts []*Process
	for _, h := range e.hosts {
		if h.proc != nil {
			hosts = append(hosts, h.proc)
		}
	}
	e.placeMu.Unlock()
	for _, p := range hosts {
		wg.Add(1)
		go func(p *Process) { defer wg.Done(); e.stopInstance(p, "shutdown") }(p)
	}
	wg.Wait()
	// Anything started while the stops above ran (a pool refill, a start
	// racing the shutdown) is killed: serve must leave no orphan.
	e.spawnMu.Lock()
	for pid, p := range e.children {
		e.log.Warn("killing a child still running at shutdown", "pid", pid)
		_ = p.Kill()
	}
	e.spawnMu.Unlock()
	e.wg.Wait()
	if e.sockDir != "" {
		os.RemoveAll(e.sockDir)
	}
}

// Lease is one request's hold on a ready instance.
type Lease struct {
	Addr     string // host:port on loopback
	Socket   string // the instance's framed Unix socket ("" : HTTP on Addr only)
	Function string
	Revision string
	PID      int
	// ColdStart is how long the request waited for an instance to start (0 when one was ready).
	ColdStart time.Duration
	inst      *Process
	rev       *revision
	eng       *Engine
	done      atomic.Bool
}

// Release gives the lease back. failed says the instance could not be
// reached (the router retries elsewhere), so it takes no more requests.
func (l *Lease) Release(failed bool) {
	if !l.done.CompareAndSwap(false, true) {
		return
	}
	if failed && l.inst.getState() == stateReady {
		// Unreachable but perhaps still running (hung, or its port gone):
		// take it out of rotation and stop it, so it is replaced rather than
		// left holding memory. A crashed one is removed by its exit anyway.
		l.inst.setState(stateFailed)
		if l.inst.alive() {
			go l.eng.stopInstance(l.inst, "unreachable")
		}
	}
	l.inst.inflight.Add(-1)
	l.rev.touch(time.Now())
	if l.ColdStart > 0 {
		l.rev.responded(l.PID, time.Now())
	}
	if l.rev.fn.Scaling.ContainerConcurrency > 0 {
		l.rev.queue.Release(1)
	}
}

// Acquire returns a lease on a ready instance of the revision, holding the
// request in the activator while one starts. The wait is bounded by ctx
// (504 upstream) and by the queue's capacity (ErrQueueFull, 503 upstream).
func (e *Engine) Acquire(ctx context.Context, function, revision string) (*Lease, error) {
	r, ok := e.revs[revKey{function, revision}]
	if !ok {
		return nil, fmt.Errorf("%w: %s/%s", ErrUnknownRevision, function, revision)
	}
	arrival := time.Now()
	r.touch(arrival)
	waited := false
	for {
		if e.stopped.Load() {
			return nil, ErrStopped
		}
		// Read before the look: a start that ends between the look and
		// the wait has released the queue already (WaitSince).
		epoch := r.queue.Epoch()
		if in := r.pick(); in != nil {
			l := &Lease{Addr: in.addr, Socket: in.sock, Function: function, Revision: revision, PID: in.pid, inst: in, rev: r, eng: e}
			if waited {
				l.ColdStart = time.Since(arrival)
			}
			return l, nil
		}
		if err := r.recentStartError(); err != nil && waited {
			// No memory anywhere: wait for some (an idle revision, a busy
			// one's last request) up to CapacityWait, then be refused.
			var ce *CapacityError
			if !errors.As(err, &ce) || time.Since(arrival) >= e.cfg.CapacityWait {
				return nil, err
			}
		}
		e.ensureStarting(r, arrival)
		waited = true
		r.waiting.Add(1)
		err := r.queue.WaitSince(ctx, epoch)
		r.waiting.Add(-1)
		if err != nil {
			return nil, err
		}
	}
}

// ensureStarting starts an instance now when the revision has none ready or
// starting, without waiting for the autoscaler's next tick: scale-from-zero
// latency is the point of the platform.
func (e *Engine) ensureStarting(r *revision, trigger time.Time) {
	r.mu.Lock()
	starting := 0
	for _, in := range r.instances {
		switch in.getState() {
		case stateStarting, stateReady:
			starting++
		}
	}
	if starting > 0 || time.Now().Before(r.retryAfter) {
		r.mu.Unlock()
		return
	}
	in := e.reserve(r)
	r.mu.Unlock()
	go e.start(r, in, trigger)
}

// Revisions lists "function/revision" keys, for the router's checks.
func (e *Engine) HasRevision(function, revision string) bool {
	_, ok := e.revs[revKey{function, revision}]
	return ok
}

// Status is a revision's state for GET /admin/functions.
type Status struct {
	Function  string          `json:"function"`
	Revision  string          `json:"revision"`
	Desired   int             `json:"desired"`
	Queued    int             `json:"queued"`
	Panic     bool            `json:"panic"`
	Reason    string          `json:"reason,omitempty"`
	Instances []ProcessStatus `json:"instances"`
	LastCold  *ColdStart      `json:"last_cold_start,omitempty"`
	// Loads and Unloads count a shared revision's loads into and unloads
	// from shared processes, by reason (scale_to_zero, lru, crash, ...).
	Loads   map[string]int `json:"loads,omitempty"`
	Unloads map[string]int `json:"unloads,omitempty"`
}

// ProcessStatus is one runtime process in Status or PoolStatus.
type ProcessStatus struct {
	PID          int     `json:"pid"`
	Port         int     `json:"port"`
	State        string  `json:"state"`
	Inflight     int64   `json:"inflight"`
	Source       string  `json:"source"`
	StartSeconds float64 `json:"start_seconds,omitempty"`
	// Shared says the process is a shared one, holding other revisions too.
	Shared bool `json:"shared,omitempty"`
	// Preload is what an idle pool process pre-loads (Config.Preload).
	Preload *PreloadStatus `json:"preload,omitempty"`
}

// ColdStart describes the latest cold start of a revision.
type ColdStart struct {
	Source  string    `json:"source"`
	PID     int       `json:"pid"`
	Trigger time.Time `json:"trigger"`
	// Launch is when the engine began the start: exec, or taking a pool
	// process to specialise. Launched is when that step returned: the
	// exec'd process listened, or the pool process answered its
	// specialise call with its sessions warm.
	Launch   time.Time `json:"launch"`
	Launched time.Time `json:"launched"`
	Ready    time.Time `json:"ready"`
	// FirstResponse is when a request that waited for this instance got
	// its response (zero until then).
	FirstResponse time.Time `json:"first_response,omitzero"`
	TotalSeconds  float64   `json:"total_seconds"`
	// Preload is how a pool specialisation used the pre-load: hit (its
	// sessions were pre-loaded), joined (their pre-load was running),
	// dropped (another revision's was dropped first) or none.
	Preload string `json:"preload,omitempty"`
}

// Statuses reports every revision, in manifest order.
func (e *Engine) Statuses() []Status {
	out := make([]Status, 0, len(e.order))
	for _, r := range e.order {
		r.mu.Lock()
		st := Status{Function: r.fn.Name, Revision: r.rev.Name, Desired: r.desired, Panic: r.decision.Panic, Reason: r.decision.Reason, LastCold: r.lastCold,
			Loads: maps.Clone(r.loads), Unloads: maps.Clone(r.unloads)}
		for _, in := range r.instances {
			st.Instances = append(st.Instances, in.status())
		}
		r.mu.Unlock()
		st.Queued = r.queue.Len()
		if st.Instances == nil {
			st.Instances = []ProcessStatus{}
		}
		sort.Slice(st.Instances, func(i, j int) bool { return st.Instances[i].PID < st.Instances[j].PID })
		out = append(out, st)
	}
	return out
}

// PoolStatus lists the idle generic processes of the pilot light.
func (e *Engine) PoolStatus() []ProcessStatus {
	return e.pool.status()
}
