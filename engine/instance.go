package engine

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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
	// lastWords is the child's latest warning or error, quoted when it fails to start.
	lastWords atomic.Pointer[string]
	// missed counts liveness checks failed in a row; checking is set while one runs.
	missed   atomic.Int32
	checking atomic.Bool
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
	st := ProcessStatus{PID: in.pid, Port: in.port, State: in.getState().String(), Inflight: in.inflight.Load(), Source: in.source}
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

// reserve places a starting instance in r (caller holds r.mu) so concurrent
// decisions count it; start fills it in.
func (e *Engine) reserve(r *revision) *Process {
	in := &Process{id: e.nextID.Add(1), exited: make(chan struct{})}
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
	in, err := e.launch(r, slot)
	launched := time.Now()
	if err == nil {
		err = e.waitReady(in)
	}
	if err != nil {
		e.log.Error("instance failed to start", "function", r.fn.Name, "revision", r.rev.Name, "source", slot.source, "err", err)
		e.m.startFailures.WithLabelValues(r.fn.Name, r.rev.Name).Inc()
		r.mu.Lock()
		r.startErr = &StartError{Function: r.fn.Name, Revision: r.rev.Name, Err: err}
		r.startErrAt = time.Now()
		r.retryAfter = time.Now().Add(startRetryBackoff)
		r.mu.Unlock()
		r.remove(slot)
		if in != nil {
			e.stopInstance(in, "start failed")
		}
		r.queue.Release(-1) // held requests see the error
		return
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
	r.mu.Lock()
	r.startErr = nil
	r.lastCold = &ColdStart{Source: in.source, PID: in.pid, Trigger: trigger, Launch: begin, Launched: launched, Ready: now, TotalSeconds: total.Seconds()}
	r.mu.Unlock()
	e.log.Info("instance ready", "function", r.fn.Name, "revision", r.rev.Name, "pid", in.pid, "source", in.source,
		"cold_start_ms", float64(total.Microseconds())/1000)
	r.queue.Release(-1)
}

// launch fills slot with a running process for r: a specialised pool
// process, or a new one.
func (e *Engine) launch(r *revision, slot *Process) (*Process, error) {
	if p := e.pool.take(); p != nil {
		adopt(slot, p)
		slot.labels.Store(&[2]string{r.fn.Name, r.rev.Name})
		if pr := e.cfg.Probes; pr != nil {
			if err := pr.Track(slot.pid, r.fn.Name, r.rev.Name); err != nil {
				e.log.Debug("probe track", "pid", slot.pid, "err", err)
			}
			pr.Mark(slot.pid, "specialise_start", time.Now())
		}
		err := e.specialise(slot, r)
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

// fold copies a child's output into the platform log, labelled with the
// function and revision it serves; the first listening line gives its address.
func (e *Engine) fold(in *Process, r io.Reader, addrc chan<- string) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if addrc != nil && strings.HasPrefix(line, listener.ReadyPrefix) {
			addrc <- strings.TrimSpace(strings.TrimPrefix(line, listener.ReadyPrefix))
			addrc = nil
			continue
		}
		target := in
		in.mu.Lock()
		if in.adoptedBy != nil {
			target = in.adoptedBy
		}
		in.mu.Unlock()
		l := target.labels.Load()
		fn, rev := "", ""
		if l != nil {
			fn, rev = l[0], l[1]
		}
		level, msg, attrs := parseRecord(line)
		if level >= slog.LevelWarn || strings.HasPrefix(line, "Error:") {
			words := msg
			for _, a := range attrs {
				if a.Key == "err" {
					words += ": " + a.Value.String()
				}
			}
			in.lastWords.Store(&words)
		}
		attrs = append(attrs, slog.String("function", fn), slog.String("revision", rev), slog.Int("pid", in.pid))
		e.log.LogAttrs(context.Background(), level, msg, attrs...)
	}
	// A line too long for the scanner ends the loop: keep reading, so the
	// child never blocks on a full pipe and its exit is still seen.
	_, _ = io.Copy(io.Discard, r)
}

// parseRecord reads one JSON log record of a child (PILOTLIGHT_LOG_FORMAT=json);
// anything else (ONNX Runtime's own prints) is passed on as a plain message.
func parseRecord(line string) (slog.Level, string, []slog.Attr) {
	var rec map[string]any
	if !strings.HasPrefix(line, "{") || json.Unmarshal([]byte(line), &rec) != nil {
		return slog.LevelInfo, strings.TrimSpace(line), []slog.Attr{slog.String("source", "instance")}
	}
	var level slog.Level
	if s, ok := rec["level"].(string); ok {
		_ = level.UnmarshalText([]byte(s))
	}
	msg, _ := rec["msg"].(string)
	attrs := []slog.Attr{slog.String("source", "instance")}
	for k, v := range rec {
		switch k {
		case "time", "level", "msg", "function", "revision":
			continue
		}
		attrs = append(attrs, slog.Any(k, v))
	}
	return level, msg, attrs
}

var readyClient = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// waitReady polls GET /v2/health/ready until 200, the process exits, or StartTimeout.
func (e *Engine) waitReady(in *Process) error {
	deadline := time.Now().Add(e.cfg.StartTimeout)
	wait := 500 * time.Microsecond
	url := "http://" + in.addr + "/v2/health/ready"
	var last string
	for time.Now().Before(deadline) {
		if !in.alive() {
			return fmt.Errorf("runtime process %d exited while starting%s", in.pid, in.said())
		}
		resp, err := readyClient.Get(url)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = strings.TrimSpace(string(body))
			if strings.Contains(last, "failed to load") {
				return fmt.Errorf("%s", last)
			}
		} else {
			last = err.Error()
		}
		select {
		case <-time.After(wait):
		case <-in.exited:
		}
		if wait < 2*time.Millisecond { // a cap of 20 ms added up to 20 ms to an exec cold start (ready at 60 ms, seen at 71.5)
			wait *= 2
		}
	}
	return fmt.Errorf("not ready within %s: %s", e.cfg.StartTimeout, last)
}

// specialise asks a generic pool process to load r's model.
func (e *Engine) specialise(in *Process, r *revision) error {
	body, _ := json.Marshal(map[string]string{"function_dir": r.dir, "revision": r.rev.Name})
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.StartTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+in.addr+"/admin/specialise", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := readyClient.Do(req)
	if err != nil {
		return fmt.Errorf("specialise pool process %d: %w", in.pid, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("specialise pool process %d: %s: %s", in.pid, resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// stopInstance drains an instance: no new requests, wait for in-flight ones
// (up to DrainTimeout), SIGTERM (the runtime drains too), SIGKILL if it
// does not exit.
func (e *Engine) stopInstance(in *Process, why string) {
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
	in.mu.Unlock()
	if pr := e.cfg.Probes; pr != nil {
		pr.Untrack(in.pid)
	}
	l := owner.labels.Load()
	fn, rev := "", ""
	if l != nil {
		fn, rev = l[0], l[1]
	}
	if owner.stopping.Load() {
		owner.setState(stateStopped)
		e.m.exits.WithLabelValues(fn, rev, "stopped").Inc()
		e.log.Info("instance stopped", "function", fn, "revision", rev, "pid", in.pid)
	} else {
		owner.setState(stateFailed)
		e.m.exits.WithLabelValues(fn, rev, "crashed").Inc()
		e.log.Error("instance exited unexpectedly; it will be replaced if still needed", "function", fn, "revision", rev, "pid", in.pid, "err", errString(err))
	}
	if fn == "" {
		e.pool.forget(in)
		return
	}
	if r, ok := e.revs[fn+"/"+rev]; ok {
		r.remove(owner)
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

var liveClient = &http.Client{Timeout: 2 * time.Second}

// checkLiveness asks every ready instance GET /v2/health/live, each in its
// own goroutine so a hung one delays nothing. An instance that misses
// livenessFailures checks in a row is hung, not crashed (its process is
// still there): it is killed, and the autoscaler starts a replacement.
func (e *Engine) checkLiveness() {
	for _, r := range e.order {
		for _, in := range r.snapshotInstances() {
			if in.getState() != stateReady || !in.checking.CompareAndSwap(false, true) {
				continue
			}
			go func(r *revision, in *Process) {
				defer in.checking.Store(false)
				resp, err := liveClient.Get("http://" + in.addr + "/v2/health/live")
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode == http.StatusOK {
						in.missed.Store(0)
						return
					}
				}
				if in.missed.Add(1) < livenessFailures || in.getState() != stateReady {
					return
				}
				e.log.Error("instance stopped answering its liveness check; killing it so it is replaced",
					"function", r.fn.Name, "revision", r.rev.Name, "pid", in.pid, "missed", livenessFailures, "err", err)
				// Its exit is then counted as a crash: it failed, the engine only ended it.
				in.setState(stateFailed)
				in.mu.Lock()
				cmd := in.cmd
				in.mu.Unlock()
				if cmd != nil && cmd.Process != nil {
					_ = cmd.Process.Kill()
				}
			}(r, in)
		}
	}
}
