package engine

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pilotlight/pilotlight/internal/listener"
)

type state int32

const (
	stateStarting state = iota
	stateReady
	stateDraining
	stateFailed
	stateStopped
)

func (s state) String() string {
	return [...]string{"starting", "ready", "draining", "failed", "stopped"}[s]
}

// Sources of a cold start.
const (
	sourcePool = "pool"
	sourceExec = "exec"
)

// Process is one child runtime process: generic while it waits in the warm
// pool, then serving one revision. Not runtime/instance.Instance, which is the
// revision loaded inside such a process.
type Process struct {
	id       int64
	pid      int
	addr     string
	port     int
	sock     string // the framed Unix socket, "" when the engine runs HTTPOnly
	source   string
	state    atomic.Int32
	inflight atomic.Int64
	cmd      *exec.Cmd
	exited   chan struct{}
	started  time.Time
	readyAt  time.Time
	stopping atomic.Bool
	labels   atomic.Pointer[[2]string] // function, revision; empty while generic
	mu       sync.Mutex
	// adoptedBy is the revision's slot a pool process now serves as.
	adoptedBy *Process
	// preload is what an idle pool process pre-loads (guarded by the pool's mu);
	// preloadCalls lets one pre-load call at a time reach it (preloadInto).
	preload      *preloadState
	preloadCalls sync.Mutex
	// lastWords is the child's latest warning or error, quoted when it fails to start.
	lastWords atomic.Pointer[string]
	// missed counts liveness checks failed in a row; checking is set while one runs.
	missed   atomic.Int32
	checking atomic.Bool
	// Shared isolation. A slot (host != nil) is a revision loaded in a
	// shared process, owner its revision, cost what it is charged, loaded
	// set once its load answered; hosting is set on the shared process itself.
	slot    bool // set at reserve, never changed: host is then set by placement (under placeMu)
	host    *host
	owner   *revision
	cost    int64
	device  int64 // what the slot is charged on the device (under placeMu)
	loaded  atomic.Bool
	hosting *host
	// loadedAs is what the process said of the revision it loaded: its
	// execution provider, why, and the device memory its sessions may hold.
	loadedAs atomic.Pointer[loadReport]
}

// loadReport is a runtime process's account of a revision it loaded, from
// its specialise answer or its readiness answer (the same fields).
type loadReport struct {
	Provider       string `json:"provider"`
	ProviderReason string `json:"provider_reason"`
	DeviceBytes    int64  `json:"device_bytes"`
	// Preload is how a specialisation used the process's pre-load
	// (preloadPath*; "" from a readiness answer or an older runtime).
	Preload string `json:"preload,omitempty"`
}

func (in *Process) said() string {
	if p := in.lastWords.Load(); p != nil {
		return ": " + *p
	}
	return " (no error logged)"
}

func (in *Process) getState() state  { return state(in.state.Load()) }
func (in *Process) setState(s state) { in.state.Store(int32(s)) }

func (in *Process) status() ProcessStatus {
	in.mu.Lock()
	st := ProcessStatus{PID: in.pid, Port: in.port, State: in.getState().String(), Inflight: in.inflight.Load(), Source: in.source, Shared: in.slot}
	if !in.readyAt.IsZero() {
		st.StartSeconds = in.readyAt.Sub(in.started).Seconds()
	}
	in.mu.Unlock()
	return st
}

func (in *Process) alive() bool {
	select {
	case <-in.exited:
		return false
	default:
		return true
	}
}

// hostDiedWait bounds how long a failed shared load waits to learn whether
// its process died: the load's connection fails before the exit is reaped.
const hostDiedWait = 200 * time.Millisecond

// hostDied says whether the shared process slot was placed on has exited
// (waiting up to hostDiedWait for the exit to be seen).
func hostDied(slot *Process) bool {
	slot.mu.Lock()
	exited := slot.exited
	slot.mu.Unlock()
	if exited == nil {
		return false
	}
	select {
	case <-exited:
		return true
	case <-time.After(hostDiedWait):
		return false
	}
}

// reserve places a starting instance in r (caller holds r.mu) so concurrent
// decisions count it; start fills it in.
func (e *Engine) reserve(r *revision) *Process {
	in := &Process{id: e.nextID.Add(1), exited: make(chan struct{}), owner: r, slot: r.shared}
	in.setState(stateStarting)
	in.labels.Store(&[2]string{r.fn.Name, r.rev.Name})
	r.instances = append(r.instances, in)
	return in
}

// start turns a reserved instance into a ready one: a specialised pool
// process when one is idle, else a fresh exec. trigger is the arrival of
// the request that asked for it (zero for autoscaler-driven starts).
func (e *Engine) start(r *revision, slot *Process, trigger time.Time) {
	begin := time.Now()
	if trigger.IsZero() {
		trigger = begin
	}
	// A dedicated process is admitted against the machine's budget as a
	// shared one is placed (placeShared): charged until it is ready, when
	// its RSS is counted instead.
	release, err := e.admitDedicated(r)
	var in *Process
	if err == nil {
		in, err = e.launch(r, slot)
	}
	launched := time.Now()
	// A shared load, and a pool process's specialisation, answer once the
	// sessions are warm and served: the answer is the readiness, and asking
	// again cost a round trip on every warm-pool cold start. An exec'd
	// process says nothing until asked.
	if err == nil && !slot.slot && in.source != sourcePool {
		err = e.waitReady(in)
	}
	release()
	if err != nil {
		var ce *CapacityError
		backoff := startRetryBackoff
		switch {
		case errors.As(err, &ce):
			// Not a failure of the revision: placement is tried again on the
			// next tick while requests wait (up to CapacityWait).
			e.log.Warn("no memory to load the revision yet", "function", r.fn.Name, "revision", r.rev.Name, "reason", ce.Reason)
			backoff = e.cfg.TickInterval
			if e.pool.dropPreloads() {
				e.log.Info("dropped the warm pool's pre-loads to make room", "function", r.fn.Name, "revision", r.rev.Name)
			}
		case (slot.slot || slot.source == sourcePool) && hostDied(slot):
			// The shared process it was loading into, or the warm-pool
			// process it was specialising (killed while idle, perhaps while
			// it pre-loaded), died: a crash the engine is handling, not a
			// failure of the revision. The held requests go back through
			// Acquire now, to a new placement or process, as the requests
			// the crash interrupted do.
			e.log.Warn("the runtime process ended during the load; starting the revision again", "function", r.fn.Name, "revision", r.rev.Name, "pid", slot.pid, "source", slot.source)
			err, backoff = nil, 0
		default:
			e.log.Error("instance failed to start", "function", r.fn.Name, "revision", r.rev.Name, "source", slot.source, "err", err)
			e.m.startFailures.WithLabelValues(r.fn.Name, r.rev.Name).Inc()
			err = &StartError{Function: r.fn.Name, Revision: r.rev.Name, Err: err}
		}
		r.mu.Lock()
		r.startErr = err
		r.startErrAt = time.Now()
		r.retryAfter = time.Now().Add(backoff)
		r.mu.Unlock()
		r.remove(slot)
		if in != nil {
			e.stopInstance(in, "start failed")
		}
		r.queue.Release(-1) // held requests see the error
		return
	}
	if rep := in.loadedAs.Load(); rep != nil && !slot.slot {
		// What its next start is charged on the device (placeShared does this for slots).
		r.device.Store(rep.DeviceBytes)
		r.deviceKnown.Store(true)
	}
	now := time.Now()
	in.mu.Lock()
	in.readyAt = now
	in.mu.Unlock()
	in.setState(stateReady)
	total := now.Sub(trigger)
	e.m.coldStarts.WithLabelValues(r.fn.Name, r.rev.Name, in.source).Inc()
	e.m.coldStartSeconds.WithLabelValues(r.fn.Name, r.rev.Name, in.source).Observe(total.Seconds())
	if p := e.cfg.Probes; p != nil {
		p.Mark(in.pid, "request_arrival", trigger)
		p.Mark(in.pid, "ready", now)
	}
	preload := ""
	if in.source == sourcePool && !slot.slot {
		preload = preloadPathNone
		if rep := in.loadedAs.Load(); rep != nil && rep.Preload != "" {
			preload = rep.Preload
		}
		e.m.specialisations.WithLabelValues(r.fn.Name, r.rev.Name, preload).Inc()
	}
	r.mu.Lock()
	r.startErr = nil
	r.lastCold = &ColdStart{Source: in.source, PID: in.pid, Trigger: trigger, Launch: begin, Launched: launched, Ready: now, TotalSeconds: total.Seconds(), Preload: preload}
	r.mu.Unlock()
	e.log.Info("instance ready", "function", r.fn.Name, "revision", r.rev.Name, "pid", in.pid, "source", in.source,
		"cold_start_ms", float64(total.Microseconds())/1000, "preload", preload)
	r.queue.Release(-1)
}

// launch fills slot with a running process for r: a specialised pool
// process, or a new one.
func (e *Engine) launch(r *revision, slot *Process) (*Process, error) {
	if r.shared {
		return slot, e.placeShared(r, slot)
	}
	if p, _ := e.pool.take(r); p != nil {
		adopt(slot, p)
		slot.labels.Store(&[2]string{r.fn.Name, r.rev.Name})
		if pr := e.cfg.Probes; pr != nil {
			if err := pr.Track(slot.pid, r.fn.Name, r.rev.Name); err != nil {
				e.log.Debug("probe track", "pid", slot.pid, "err", err)
			}
			pr.Mark(slot.pid, "specialise_start", time.Now())
		}
		_, _, err := e.specialise(slot, r, false)
		// The replacement starts once this cold start's sessions exist: a
		// new process's start-up (exec, ONNX Runtime, prewarm) would
		// otherwise take the CPUs the specialisation creates them on.
		e.pool.refill()
		return slot, err
	}
	slot.mu.Lock()
	slot.source = sourceExec
	slot.mu.Unlock()
	args := []string{"--function", r.dir, "--revision", r.rev.Name, "--listen", "127.0.0.1", "--port", "0"}
	env := append(childEnv(), "K_SERVICE="+r.fn.Name, "K_REVISION="+r.rev.Name, "K_CONFIGURATION="+r.fn.Name)
	return slot, e.spawn(slot, args, env)
}

// childEnv is the environment of every runtime child: ours, with JSON logs.
func childEnv() []string {
	return append(os.Environ(), "PILOTLIGHT_LOG_FORMAT=json")
}

// adopt moves a pool process into slot (the slot keeps its place in the revision).
func adopt(slot, p *Process) {
	// started is the specialisation's start: the process itself was started ahead of demand.
	slot.mu.Lock()
	defer slot.mu.Unlock()
	slot.source = sourcePool
	slot.pid, slot.addr, slot.port, slot.sock, slot.cmd, slot.exited, slot.started = p.pid, p.addr, p.port, p.sock, p.cmd, p.exited, time.Now()
	p.mu.Lock()
	p.adoptedBy = slot
	p.mu.Unlock()
}

// spawn starts a child pilotlight-runtime and waits for its listening line.
func (e *Engine) spawn(in *Process, args, env []string) error {
	var sock string
	if e.sockDir != "" {
		sock = filepath.Join(e.sockDir, strconv.FormatInt(in.id, 10)+".sock") // ids are never reused
		args = append(args, "--socket", sock)
	}
	cmd := exec.Command(e.cfg.Binary, args...)
	cmd.Env = env
	// Own process group: a terminal's Ctrl-C reaches serve, which drains the
	// children itself; Pdeathsig stops them if serve is killed outright.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// With probes, a child that will load a model waits at its start gate
	// until the probes track its pid: its model-file reads, from its first
	// openat, are then the probes' to count, however late this goroutine
	// runs after the fork on a loaded machine.
	var gate *os.File
	if l := in.labels.Load(); e.cfg.Probes != nil && l != nil && l[0] != "" {
		r, w, err := os.Pipe()
		if err != nil {
			return err
		}
		defer r.Close()
		gate = w
		defer func() { gate.Close() }() // a start that fails opens it too
		cmd.ExtraFiles = append(cmd.ExtraFiles, r)
		cmd.Env = append(slices.Clip(cmd.Env), listener.StartGateEnv+"="+strconv.Itoa(2+len(cmd.ExtraFiles)))
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	e.spawnMu.Lock()
	if e.stopped.Load() {
		e.spawnMu.Unlock()
		return ErrStopped
	}
	in.mu.Lock()
	in.started = time.Now()
	err = cmd.Start()
	if err == nil {
		in.cmd, in.pid = cmd, cmd.Process.Pid
	}
	in.mu.Unlock()
	if err != nil {
		e.spawnMu.Unlock()
		return fmt.Errorf("start %s: %w", e.cfg.Binary, err)
	}
	e.wg.Add(3)
	e.children[in.pid] = cmd.Process
	e.spawnMu.Unlock()
	if pr := e.cfg.Probes; pr != nil {
		if l := in.labels.Load(); l != nil && l[0] != "" {
			if err := pr.Track(in.pid, l[0], l[1]); err != nil {
				e.log.Debug("probe track", "pid", in.pid, "err", err)
			}
		}
	}
	if gate != nil {
		gate.Write([]byte{1}) // tracked: the child goes on (an error means it is gone)
	}
	addrc := make(chan string, 1)
	// Wait closes the pipes once the child exits, so it runs only after both
	// have been read to the end: otherwise the child's last words (why it
	// failed to start) could be lost.
	var folds sync.WaitGroup
	folds.Add(2)
	go func() { defer e.wg.Done(); defer folds.Done(); e.fold(in, stdout, addrc) }()
	go func() { defer e.wg.Done(); defer folds.Done(); e.fold(in, stderr, nil) }()
	go func() {
		defer e.wg.Done()
		folds.Wait()
		err := cmd.Wait()
		e.spawnMu.Lock()
		delete(e.children, in.pid)
		e.spawnMu.Unlock()
		if sock != "" {
			os.Remove(sock) // a killed child leaves it behind
		}
		close(in.exited)
		e.exited(in, err)
	}()
	select {
	case addr := <-addrc:
		_, port, _ := net.SplitHostPort(addr)
		in.mu.Lock()
		in.addr, in.sock = addr, sock
		in.port, _ = strconv.Atoi(port)
		in.mu.Unlock()
		return nil
	case <-in.exited:
		return fmt.Errorf("runtime process %d exited before listening%s", in.pid, in.said())
	case <-time.After(e.cfg.StartTimeout):
		return fmt.Errorf("runtime process %d did not listen within %s", in.pid, e.cfg.StartTimeout)
	}
}

var readyClient = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// stopInstance drains an instance: no new requests, wait for in-flight ones
// (up to DrainTimeout), SIGTERM (the runtime drains too), SIGKILL if it
// does not exit.
func (e *Engine) stopInstance(in *Process, why string) {
	if in.slot {
		e.unloadSlot(in, why)
		return
	}
	in.stopping.Store(true)
	if in.getState() != stateFailed {
		in.setState(stateDraining)
	}
	deadline := time.Now().Add(e.cfg.DrainTimeout)
	for in.inflight.Load() > 0 && time.Now().Before(deadline) && in.alive() {
		time.Sleep(5 * time.Millisecond)
	}
	in.mu.Lock()
	cmd, exited := in.cmd, in.exited
	in.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(e.cfg.DrainTimeout):
		e.log.Warn("instance did not exit after SIGTERM; killing", "pid", cmd.Process.Pid, "why", why)
		_ = cmd.Process.Kill()
		<-exited
	}
}

// exited runs when a child process ends, for whatever reason.
func (e *Engine) exited(in *Process, err error) {
	in.mu.Lock()
	owner := in
	if in.adoptedBy != nil {
		owner = in.adoptedBy
	}
	hosting := in.hosting
	in.mu.Unlock()
	if pr := e.cfg.Probes; pr != nil {
		pr.Untrack(in.pid)
	}
	if hosting != nil {
		e.hostExited(hosting, in, err)
		return
	}
	l := owner.labels.Load()
	fn, rev := "", ""
	if l != nil {
		fn, rev = l[0], l[1]
	}
	if owner.stopping.Load() {
		owner.setState(stateStopped)
		e.m.exits.WithLabelValues(fn, rev, exitStopped).Inc()
		e.log.Info("instance stopped", "function", fn, "revision", rev, "pid", in.pid)
	} else {
		owner.setState(stateFailed)
		e.m.exits.WithLabelValues(fn, rev, exitCrashed).Inc()
		e.log.Error("instance exited unexpectedly; it will be replaced if still needed", "function", fn, "revision", rev, "pid", in.pid, "err", errString(err))
	}
	if fn == "" {
		e.pool.forget(in)
		return
	}
	if r, ok := e.revs[revKey{fn, rev}]; ok {
		r.remove(owner)
		if owner.stopping.Load() && r.atZero() && r.desiredCount() == 0 {
			e.pool.wentToZero(r)
		}
		if r.waiting.Load() > 0 {
			// Held requests go back through Acquire, which starts a replacement.
			r.queue.Release(-1)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return "exit status 0"
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.String()
	}
	return err.Error()
}

// liveClient opens a connection per check (one every LivenessInterval):
// an idle keep-alive TCP connection to every instance would keep the eBPF
// probes' per-TCP-read program attached for the whole machine while the
// requests themselves go over the framed socket (bpf/README.md).
var liveClient = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
