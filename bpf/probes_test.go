package bpf

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"
)

// serverEnv makes the test binary run testServer instead of the tests: the
// probes need a real child process with real sockets.
const serverEnv = "PILOTLIGHT_BPF_TEST_SERVER"

func TestMain(m *testing.M) {
	if os.Getenv(serverEnv) == "1" {
		testServer()
		return
	}
	os.Exit(m.Run())
}

// modelEnv names a file the test server reads on /load, as a runtime
// instance reads its model.
const modelEnv = "PILOTLIGHT_BPF_TEST_MODEL"

// socketEnv names a Unix socket the test server also serves on, as a
// runtime instance serves the router's framed transport beside $PORT.
const socketEnv = "PILOTLIGHT_BPF_TEST_SOCKET"

// testServer is a tiny HTTP server on 127.0.0.1:0 that prints its address.
// /load reads $PILOTLIGHT_BPF_TEST_MODEL, computes for ?spin= and sleeps
// for ?sleep= (a model load's shape); /dial?addr= opens a connection,
// writes "hello\n" and closes it.
func testServer() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("listening %s\n", ln.Addr())
	mux := http.NewServeMux()
	mux.HandleFunc("/load", func(w http.ResponseWriter, r *http.Request) {
		b, err := os.ReadFile(os.Getenv(modelEnv))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		spin, _ := time.ParseDuration(r.URL.Query().Get("spin"))
		sleep, _ := time.ParseDuration(r.URL.Query().Get("sleep"))
		sum, start := 0, time.Now()
		for time.Since(start) < spin {
			for i := range 10000 {
				sum += i * i
			}
		}
		time.Sleep(sleep)
		fmt.Fprintf(w, "read %d bytes %d\n", len(b), sum)
	})
	mux.HandleFunc("/dial", func(w http.ResponseWriter, r *http.Request) {
		c, err := net.Dial("tcp", r.URL.Query().Get("addr"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		_, err = c.Write([]byte("hello\n"))
		c.Close()
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		fmt.Fprintln(w, "dialled")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// A little work, so a request is more than a syscall or two.
		sum := 0
		for i := range 20000 {
			sum += i * i
		}
		fmt.Fprintf(w, "ok %d\n", sum)
	})
	// /tag?prio=N gives this request's connection socket priority N before
	// answering, as the runtime tags its ready answer and first request.
	mux.HandleFunc("/tag", func(w http.ResponseWriter, r *http.Request) {
		prio, _ := strconv.Atoi(r.URL.Query().Get("prio"))
		if c, ok := r.Context().Value(connCtxKey{}).(syscall.Conn); ok {
			if rc, err := c.SyscallConn(); err == nil {
				_ = rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PRIORITY, prio) })
			}
		}
		fmt.Fprintf(w, "tagged %d\n", prio)
	})
	if path := os.Getenv(socketEnv); path != "" {
		uln, err := net.Listen("unix", path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		go func() { _ = http.Serve(uln, mux) }()
	}
	srv := &http.Server{Handler: mux, ConnContext: func(ctx context.Context, c net.Conn) context.Context {
		return context.WithValue(ctx, connCtxKey{}, c)
	}}
	_ = srv.Serve(ln)
}

type connCtxKey struct{}

// child is a running testServer.
type child struct {
	cmd  *exec.Cmd
	pid  int
	addr string
}

func startServer(t testing.TB, env ...string) *child {
	t.Helper()
	return startServerVia(t, nil, env...)
}

// startServerVia starts the test server through a wrapper that execs it in
// place (same pid), such as ip netns exec.
func startServerVia(t testing.TB, wrapper []string, env ...string) *child {
	t.Helper()
	argv := append(slices.Clone(wrapper), os.Args[0])
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(append(os.Environ(), serverEnv+"=1"), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start test server: %v", err)
	}
	c := &child{cmd: cmd, pid: cmd.Process.Pid}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("read test server address: %v", err)
	}
	c.addr = strings.TrimSpace(strings.TrimPrefix(line, "listening "))
	return c
}

// newProbes loads the probes. It skips only where they cannot run at all
// (not root, or a kernel without BTF; CI is root on a BTF kernel), and
// fails on any other load error: a permission, verifier or attach failure
// there is a regression.
func newProbes(t testing.TB, reg prometheus.Registerer) *Probes {
	t.Helper()
	return newProbesWith(t, Config{ParentPID: os.Getpid(), Registerer: reg, ReadInterval: 100 * time.Millisecond})
}

func newProbesWith(t testing.TB, cfg Config) *Probes {
	t.Helper()
	skipWithoutBPF(t)
	p, err := New(cfg)
	if err != nil {
		var le *LoadError
		if errors.As(err, &le) {
			t.Fatalf("New: %v (cause: %v)", err, le.Err)
		}
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

// skipWithoutBPF skips where the probes cannot run at all: not root, or no
// kernel BTF. Neither is true in CI.
func skipWithoutBPF(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("eBPF probes need root (CAP_BPF and CAP_PERFMON); running as uid", os.Geteuid())
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		t.Skipf("eBPF probes need kernel BTF: %v", err)
	}
}

// get sends one request and returns its client-measured latency.
func get(t testing.TB, client *http.Client, url string) time.Duration {
	t.Helper()
	start := time.Now()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	d := time.Since(start)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	return d
}

func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// kernelHists returns the three kernel histograms of function/revision from reg.
func kernelHists(t testing.TB, reg *prometheus.Registry, function, revision string) map[string]*dto.Histogram {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]*dto.Histogram{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if m.GetHistogram() == nil || label(m, "function") != function || label(m, "revision") != revision {
				continue
			}
			if phase := label(m, "phase"); phase != "" {
				out[mf.GetName()+"/"+phase] = m.GetHistogram()
				continue
			}
			out[mf.GetName()] = m.GetHistogram()
		}
	}
	return out
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func gauge(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not exported", name)
	return 0
}

const (
	mRunq    = "pilotlight_bpf_runqueue_delay_seconds"
	mSockq   = "pilotlight_bpf_socket_receive_queue_seconds"
	mSyscall = "pilotlight_bpf_network_syscall_seconds"
)

func TestProbesMeasureAChildServer(t *testing.T) {
	reg := prometheus.NewRegistry()
	// With the syscall-latency and socket-queue options: all three kernel histograms.
	p := newProbesWith(t, Config{ParentPID: os.Getpid(), Registerer: reg, ReadInterval: 100 * time.Millisecond, SyscallLatency: true, SocketQueue: true})
	if got := gauge(t, reg, "pilotlight_bpf_enabled"); got != 1 {
		t.Errorf("pilotlight_bpf_enabled = %v, want 1", got)
	}
	srv := startServer(t)
	if err := p.Track(srv.pid, "fraud", "fraud-00001"); err != nil {
		t.Fatalf("Track: %v", err)
	}

	// The engine's way: poll readiness on fresh connections, then mark
	// ready, then the held request goes through a new connection.
	poll := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	get(t, poll, "http://"+srv.addr+"/v2/health/ready")
	arrival := time.Now()
	p.Mark(srv.pid, MarkRequestArrival, arrival)
	p.Mark(srv.pid, MarkReady, time.Now())

	client := &http.Client{Transport: &http.Transport{}}
	// The cold-start request opens the connection; on_tcp_read is attached
	// once user space has seen it open (the reads before are not seen).
	get(t, client, "http://"+srv.addr+"/")
	waitFor(t, "on_tcp_read attached for the open connection", 5*time.Second, func() bool {
		return attachedOf(p, socketQueuePrograms) == len(socketQueuePrograms)
	})
	var clientSum time.Duration
	const requests = 60
	for range requests {
		clientSum += get(t, client, "http://"+srv.addr+"/")
	}

	var tl Timeline
	waitFor(t, "the cold-start timeline", 5*time.Second, func() bool {
		var ok bool
		tl, ok = p.LatestTimelines()["fraud/fraud-00001"]
		return ok
	})
	if tl.PID != srv.pid || tl.Source != "exec" {
		t.Errorf("timeline pid %d source %q, want %d exec", tl.PID, tl.Source, srv.pid)
	}
	at := map[string]TimelineEvent{}
	for _, e := range tl.Events {
		at[e.Name] = e
	}
	order := []string{EventExec, EventListen, EventFirstAccept, MarkReady, EventAccept, EventFirstWrite}
	for i, name := range order {
		e, ok := at[name]
		if !ok {
			t.Fatalf("timeline has no %s: %+v", name, tl.Events)
		}
		if i > 0 && e.Time.Before(at[order[i-1]].Time) {
			t.Errorf("%s at %s is before %s at %s", name, e.Time, order[i-1], at[order[i-1]].Time)
		}
	}
	if off := at[EventExec].OffsetMS; off != 0 {
		t.Errorf("exec offset %v ms, want 0", off)
	}
	// Exec was before Track, which was before the first request's arrival.
	if !at[EventExec].Time.Before(arrival) || at[EventExec].Time.Before(arrival.Add(-10*time.Second)) {
		t.Errorf("exec at %s is implausible for a request arriving at %s", at[EventExec].Time, arrival)
	}
	for _, ph := range []string{PhaseExecToListen, PhaseListenToReady, PhaseReadyToAccept, PhaseAcceptToFirstWrite, PhaseArrivalToFirstWrite} {
		v, ok := tl.Phases[ph]
		if !ok || v < 0 || v > 10_000 {
			t.Errorf("phase %s = %v ms (present %v), want 0..10s", ph, v, ok)
		}
	}
	if _, err := json.Marshal(p.LatestTimelines()); err != nil {
		t.Errorf("timelines are not JSON-encodable: %v", err)
	}

	h := kernelHists(t, reg, "fraud", "fraud-00001")
	for _, name := range []string{mRunq, mSockq, mSyscall} {
		if h[name] == nil || h[name].GetSampleCount() == 0 {
			t.Errorf("%s: no samples for the tracked pid", name)
			continue
		}
		if s := h[name].GetSampleSum(); s < 0 {
			t.Errorf("%s: sum %v < 0", name, s)
		}
		t.Logf("%s: %d samples, %.3f ms total", name, h[name].GetSampleCount(), h[name].GetSampleSum()*1000)
	}
	// Every request's bytes were queued once per read; 60 requests, at least 60 samples.
	if n := h[mSockq].GetSampleCount(); n < requests {
		t.Errorf("%s: %d samples for %d requests", mSockq, n, requests)
	}
	for _, name := range []string{mSockq, mSyscall} {
		if s := h[name].GetSampleSum(); s > clientSum.Seconds() {
			t.Errorf("%s: %.3f ms in total, more than the requests' own %.3f ms", name, s*1000, clientSum.Seconds()*1000)
		}
	}
	t.Logf("client latency: %.3f ms total for %d requests", clientSum.Seconds()*1000, requests)
	for _, ph := range []string{PhaseExecToListen, PhaseListenToReady, PhaseReadyToAccept, PhaseAcceptToFirstWrite, PhaseArrivalToFirstWrite} {
		if c := h["pilotlight_bpf_cold_start_phase_seconds/"+ph]; c == nil || c.GetSampleCount() != 1 {
			t.Errorf("cold start phase %s: want one observation, got %v", ph, c)
		}
	}

	// Untrack: the counts stay, and stop growing.
	p.Untrack(srv.pid)
	before := kernelHists(t, reg, "fraud", "fraud-00001")
	// Untrack removed the pid from the kernel's map before returning, so
	// these requests cannot be counted.
	for range 20 {
		get(t, client, "http://"+srv.addr+"/")
	}
	after := kernelHists(t, reg, "fraud", "fraud-00001")
	for _, name := range []string{mRunq, mSockq, mSyscall} {
		if b, a := before[name].GetSampleCount(), after[name].GetSampleCount(); a != b || b == 0 {
			t.Errorf("%s after Untrack: %d samples, before %d (want equal and non-zero)", name, a, b)
		}
	}
	if got := gauge(t, reg, "pilotlight_bpf_tracked_instances"); got != 0 {
		t.Errorf("tracked instances after Untrack = %v", got)
	}
	// Over TCP alone the program for every socket read is never attached.
	if n := attachedOf(p, []string{unixReadProgram}); n != 0 {
		t.Errorf("%s attached with no Unix connection seen", unixReadProgram)
	}
}

func TestProbesSurviveAPidExitingMidRequest(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := newProbes(t, reg)
	srv := startServer(t)
	if err := p.Track(srv.pid, "recommend", "recommend-00001"); err != nil {
		t.Fatalf("Track: %v", err)
	}
	p.Mark(srv.pid, MarkReady, time.Now())
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		client := &http.Client{Timeout: time.Second}
		for {
			select {
			case <-stop:
				return
			default:
			}
			if resp, err := client.Get("http://" + srv.addr + "/"); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
	}()
	time.Sleep(100 * time.Millisecond)
	if err := srv.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = srv.cmd.Wait()
	close(stop)
	<-done

	key := uint32(srv.pid)
	waitFor(t, "the exit to be seen", 5*time.Second, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.instances[key] == nil && p.states[key] == nil && p.portsOf[key] == nil
	})
	var slot uint32
	if err := p.tracked.Lookup(key, &slot); err == nil {
		t.Errorf("pid %d still in the kernel's tracked map after exit", srv.pid)
	}
	p.Untrack(srv.pid) // after the exit: a no-op
	p.mu.Lock()
	free := len(p.freeSlots)
	p.mu.Unlock()
	if free != maxTracked {
		t.Errorf("%d free slots after the only tracked pid exited, want %d", free, maxTracked)
	}
	if h := kernelHists(t, reg, "recommend", "recommend-00001"); h[mRunq].GetSampleCount() == 0 {
		t.Errorf("the counts of the exited pid were lost")
	}
}

func TestTrackRefusesBeyondTheLimit(t *testing.T) {
	p := newProbes(t, nil)
	// Pids at and above 2^22 cannot exist (pid_max's ceiling).
	base := 1 << 22
	for i := range maxTracked {
		if err := p.Track(base+i, "f", "r"); err != nil {
			t.Fatalf("Track #%d: %v", i, err)
		}
	}
	err := p.Track(base+maxTracked, "f", "r")
	if err == nil || !strings.Contains(err.Error(), "tracked already") {
		t.Fatalf("Track beyond the limit: %v, want a refusal", err)
	}
	// Re-tracking under new labels reuses the pid's place.
	if err := p.Track(base, "f", "r2"); err != nil {
		t.Errorf("re-label a tracked pid: %v", err)
	}
	for i := range maxTracked {
		p.Untrack(base + i)
	}
	if err := p.Track(base+maxTracked, "f", "r"); err != nil {
		t.Errorf("Track after Untrack freed the slots: %v", err)
	}
	for _, bad := range []struct {
		pid int
		fn  string
	}{{0, "f"}, {-1, "f"}, {1, ""}} {
		if err := p.Track(bad.pid, bad.fn, "r"); err == nil {
			t.Errorf("Track(%d, %q) accepted", bad.pid, bad.fn)
		}
	}
}

func TestCloseTwiceAndUseAfterClose(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := newProbes(t, reg)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := p.Track(os.Getpid(), "f", "r"); err == nil {
		t.Error("Track after Close accepted")
	}
	p.Untrack(os.Getpid())
	p.Mark(os.Getpid(), MarkReady, time.Now())
	if n := len(p.LatestTimelines()); n != 0 {
		t.Errorf("%d timelines", n)
	}
	// Closing unregisters: a new Probes can register on the same registry.
	p2, err := New(Config{Registerer: reg})
	if err != nil {
		t.Fatalf("New after Close: %v", err)
	}
	p2.Close()
}

func TestDisabledExportsZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	if err := Disabled(reg); err != nil {
		t.Fatal(err)
	}
	if got := gauge(t, reg, "pilotlight_bpf_enabled"); got != 0 {
		t.Errorf("pilotlight_bpf_enabled = %v, want 0", got)
	}
}

// Bounds the probes must stay within on Linux 6.18 (README.md lists the
// measured figures): instructions the verifier walked per program, and the
// kernel memory of all maps together.
var verifiedBudget = map[string]uint32{
	"on_exec":        400,
	"on_exit":        300,
	"on_sys_enter":   20, // syscall_latency off: the program is a constant return
	"on_sys_exit":    400,
	"on_wakeup":      400,
	"on_wakeup_new":  400,
	"on_switch":      2500,
	"on_data_ready":  2500,
	"on_sock_read":   300,
	"on_tcp_read":    1200,
	"on_send_length": 300,
	"on_sock_state":  2000,
}

// With the syscall-latency option the syscall programs do their work.
var verifiedBudgetSyscallLatency = map[string]uint32{"on_sys_enter": 400, "on_sys_exit": 2000}

func TestSyscallLatencyProgramsWithinBudget(t *testing.T) {
	p := newProbesWith(t, Config{SyscallLatency: true})
	if n := attachedOf(p, syscallPrograms); n != len(syscallPrograms) {
		t.Errorf("%d syscall programs attached with the syscall-latency option, want %d", n, len(syscallPrograms))
	}
	for name, budget := range verifiedBudgetSyscallLatency {
		info, err := p.coll.Programs[name].Info()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		verified, ok := info.VerifiedInstructions()
		if !ok || verified > budget || verified <= verifiedBudget[name] {
			t.Errorf("program %s: %d instructions verified (reported %v), want more than without the option and at most %d", name, verified, ok, budget)
		}
		t.Logf("program %-16s %5d verified with the syscall-latency option (budget %d)", name, verified, budget)
	}
}

// Task and socket storage grow with the tasks and tracked sockets they
// describe (48 and 24 bytes each) and count little here.
const mapMemoryBudget = 2 << 20 // bytes, all maps

func TestProgramsLoadWithinBudget(t *testing.T) {
	p := newProbes(t, nil)
	if len(p.coll.Programs) != len(verifiedBudget) {
		t.Errorf("%d programs loaded, the budget names %d", len(p.coll.Programs), len(verifiedBudget))
	}
	// The cold-start programs wait for a cold start, the socket-queue ones
	// for their option and a TCP connection; every other one is attached.
	if want := len(p.coll.Programs) - len(dynamicPrograms); len(p.links) != want || len(p.dynLinks) != 0 {
		t.Errorf("%d links attached and %d cold-start programs, want %d and none", len(p.links), len(p.dynLinks), want)
	}
	for name, prog := range p.coll.Programs {
		info, err := prog.Info()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		insns, err := info.Instructions()
		if err != nil {
			t.Fatalf("%s instructions: %v", name, err)
		}
		verified, ok := info.VerifiedInstructions()
		if !ok {
			t.Fatalf("%s: the kernel does not report verified instructions", name)
		}
		budget, known := verifiedBudget[name]
		if !known || verified > budget {
			t.Errorf("program %s: %d instructions verified, budget %d (known %v)", name, verified, budget, known)
		}
		t.Logf("program %-16s %4d instructions (xlated), %5d verified (budget %d)", name, len(insns), verified, budget)
	}
	var total uint64
	for name, m := range p.coll.Maps {
		info, err := m.Info()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		mem, ok := info.Memlock()
		if !ok {
			t.Fatalf("map %s: the kernel does not report its memory", name)
		}
		total += mem
		t.Logf("map %-12s %-8s key %2d value %4d max_entries %6d memlock %8d", name, info.Type, info.KeySize, info.ValueSize, info.MaxEntries, mem)
	}
	if total == 0 || total > mapMemoryBudget {
		t.Errorf("maps hold %d bytes, budget %d", total, mapMemoryBudget)
	}
	t.Logf("maps: %d bytes in total (budget %d)", total, mapMemoryBudget)

	// Tracking a pid opens its cold start: on_sys_exit (model reads)
	// attaches until it is ready, on_wakeup until its response (or until
	// forgotten), on_send_length until its response (or until forgotten); on_sys_enter only with the syscall-latency option.
	a, b := startServer(t), startServer(t)
	for _, c := range []*child{a, b} {
		if err := p.Track(c.pid, "f", "r"); err != nil {
			t.Fatal(err)
		}
	}
	wakeup := []string{wakeupProgram}
	for _, step := range []struct {
		what                  string
		do                    func()
		syscall, wakeup, cold int
	}{
		{"two cold starts", func() {}, 1, 1, 1},
		{"one ready, one loading", func() { p.Mark(a.pid, MarkReady, time.Now()) }, 1, 1, 1},
		{"one ready, one gone", func() { p.Untrack(b.pid) }, 0, 1, 1},
		{"none", func() { p.Untrack(a.pid) }, 0, 0, 0},
	} {
		step.do()
		s, w, c := attachedOf(p, syscallPrograms), attachedOf(p, wakeup), attachedOf(p, coldStartPrograms)
		if s != step.syscall || w != step.wakeup || c != step.cold {
			t.Errorf("%s: %d syscall programs, %d on_wakeup and %d other cold-start programs attached, want %d, %d and %d",
				step.what, s, w, c, step.syscall, step.wakeup, step.cold)
		}
	}
	// A ready instance whose first request does not come lets on_wakeup go
	// after readyGrace.
	c := startServer(t)
	if err := p.Track(c.pid, "f", "r"); err != nil {
		t.Fatal(err)
	}
	p.Mark(c.pid, MarkReady, time.Now())
	waitFor(t, "on_wakeup to detach after the grace", 10*time.Second, func() bool { return attachedOf(p, wakeup) == 0 })
	// The response is still awaited.
	if n := attachedOf(p, coldStartPrograms); n != len(coldStartPrograms) {
		t.Errorf("%d cold-start programs attached while the ready instance awaits its first request, want %d", n, len(coldStartPrograms))
	}
}

// attachedOf counts the named dynamic programs that are attached.
func attachedOf(p *Probes, names []string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, name := range names {
		if p.dynLinks[name] != nil {
			n++
		}
	}
	return n
}

func TestProbesTimelineOfAWarmPoolProcess(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := newProbesWith(t, Config{ParentPID: os.Getpid(), Registerer: reg, ReadInterval: 100 * time.Millisecond, SocketQueue: true})
	// Started ahead of demand: exec, bind and listen happen untracked.
	srv := startServer(t)
	poll := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	get(t, poll, "http://"+srv.addr+"/v2/health/live")

	arrival := time.Now()
	if err := p.Track(srv.pid, "recommend", "recommend-00002"); err != nil {
		t.Fatalf("Track: %v", err)
	}
	p.Mark(srv.pid, MarkSpecialiseStart, time.Now())
	p.Mark(srv.pid, MarkRequestArrival, arrival)
	get(t, poll, "http://"+srv.addr+"/admin/specialise")
	p.Mark(srv.pid, MarkReady, time.Now())
	client := &http.Client{Transport: &http.Transport{}}
	get(t, client, "http://"+srv.addr+"/")
	waitFor(t, "on_tcp_read attached for the open connection", 5*time.Second, func() bool {
		return attachedOf(p, socketQueuePrograms) == len(socketQueuePrograms)
	})
	for range 7 {
		get(t, client, "http://"+srv.addr+"/")
	}
	var tl Timeline
	waitFor(t, "the warm-pool timeline", 5*time.Second, func() bool {
		var ok bool
		tl, ok = p.LatestTimelines()["recommend/recommend-00002"]
		return ok
	})
	if tl.Source != "pool" || tl.PID != srv.pid {
		t.Errorf("source %q pid %d, want pool %d", tl.Source, tl.PID, srv.pid)
	}
	names := map[string]bool{}
	for _, e := range tl.Events {
		names[e.Name] = true
	}
	for _, want := range []string{EventExec, EventListen, EventFirstAccept, MarkSpecialiseStart, MarkReady, EventAccept, EventFirstWrite} {
		if !names[want] {
			t.Errorf("no %s in %+v", want, tl.Events)
		}
	}
	if _, ok := tl.Phases[PhaseExecToListen]; ok {
		t.Errorf("a pool process observed exec_to_listen: %v", tl.Phases)
	}
	if v, ok := tl.Phases[PhaseSpecialiseToReady]; !ok || v < 0 {
		t.Errorf("specialise_to_ready = %v (present %v)", v, ok)
	}
	// The port was learnt from the kernel's listen(2), before Track: the
	// socket queue was measured.
	if h := kernelHists(t, reg, "recommend", "recommend-00002"); h[mSockq].GetSampleCount() < 5 {
		t.Errorf("%s: %d samples for 7 requests after on_tcp_read was attached", mSockq, h[mSockq].GetSampleCount())
	}
}

// BenchmarkRequestOverhead measures a loopback HTTP request to a child
// server with the probes off and on (tracking the server), for the cost of
// the probes: go test -run '^$' -bench RequestOverhead ./bpf/
func BenchmarkRequestOverhead(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "probes=off"
		if on {
			name = "probes=on"
		}
		b.Run(name, func(b *testing.B) {
			srv := startServer(b)
			if on {
				p := newProbes(b, nil)
				if err := p.Track(srv.pid, "bench", "bench-1"); err != nil {
					b.Fatal(err)
				}
			}
			client := &http.Client{Transport: &http.Transport{}}
			url := "http://" + srv.addr + "/"
			get(b, client, url)
			b.ResetTimer()
			for b.Loop() {
				get(b, client, url)
			}
		})
	}
}

func TestMarkIgnoresStrangers(t *testing.T) {
	p := newProbes(t, nil)
	stranger := 1<<22 + 7
	p.Mark(stranger, MarkReady, time.Now())
	p.Mark(stranger, MarkRequestArrival, time.Now())
	p.mu.Lock()
	n := len(p.states)
	_, has := p.states[uint32(stranger)]
	p.mu.Unlock()
	if has {
		t.Errorf("Mark of an untracked pid kept state (%d states)", n)
	}
	var v uint64
	if err := p.ready.Lookup(uint32(stranger), &v); err == nil {
		t.Error("Mark of an untracked pid armed the kernel")
	}
}

// TestColdStartAnatomyAddsUp follows a child's cold start the engine's way
// (exec, Track, readiness polls, model load, ready mark, the held request)
// and checks that each phase's states add up to its wall time, that the
// phases add up to the cold start, and that what the child did lands in
// the right state: a busy loop on CPU (or waiting for one), a sleep
// blocked, and its model file's bytes read.
func TestColdStartAnatomyAddsUp(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := newProbes(t, reg)
	model := filepath.Join(t.TempDir(), "model.onnx")
	const modelSize = 3<<20 + 17
	if err := os.WriteFile(model, bytes.Repeat([]byte{7}, modelSize), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, modelEnv+"="+model)
	if err := p.Track(srv.pid, "fraud", "fraud-00003"); err != nil {
		t.Fatalf("Track: %v", err)
	}
	const spin, sleep = 40 * time.Millisecond, 60 * time.Millisecond
	poll := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	get(t, poll, fmt.Sprintf("http://%s/load?spin=%s&sleep=%s", srv.addr, spin, sleep))
	p.Mark(srv.pid, MarkRequestArrival, time.Now())
	p.Mark(srv.pid, MarkReady, time.Now())
	get(t, &http.Client{Transport: &http.Transport{}}, "http://"+srv.addr+"/")

	var tl Timeline
	waitFor(t, "the cold-start timeline", 5*time.Second, func() bool {
		var ok bool
		tl, ok = p.LatestTimelines()["fraud/fraud-00003"]
		return ok
	})
	at := map[string]time.Time{}
	for _, e := range tl.Events {
		at[e.Name] = e.Time
	}
	wall := ms(at[EventFirstWrite].Sub(at[EventExec]))
	want := []string{PhaseExecToListen, PhaseListenToReady, PhaseReadyToAccept, PhaseAcceptToFirstWrite}
	if len(tl.Anatomy) != len(want) {
		t.Fatalf("anatomy %+v, want phases %v", tl.Anatomy, want)
	}
	var sum, phases float64
	var modelBytes uint64
	for i, ph := range tl.Anatomy {
		if ph.Phase != want[i] {
			t.Errorf("phase %d is %s, want %s", i, ph.Phase, want[i])
		}
		var states float64
		for _, st := range anatStates {
			states += ph.StatesMS[st]
		}
		// The ready mark's counters are read from user space a little
		// after the mark: a sub-millisecond phase may be off by that much.
		if math.Abs(states-ph.WallMS) > max(0.1*ph.WallMS, 0.5) {
			t.Errorf("phase %s: states add up to %.3f ms, its wall time is %.3f ms", ph.Phase, states, ph.WallMS)
		}
		sum += states
		phases += ph.WallMS
		modelBytes += ph.ModelBytes
		t.Logf("%-22s wall %8.3f ms: %v, %d major faults, %d model bytes", ph.Phase, ph.WallMS, ph.StatesMS, ph.MajorFaults, ph.ModelBytes)
	}
	if math.Abs(sum-wall) > 0.1*wall || math.Abs(phases-wall) > 0.1*wall {
		t.Errorf("anatomy adds up to %.3f ms (phases %.3f ms), the cold start took %.3f ms", sum, phases, wall)
	}
	load := tl.Anatomy[1] // listen_to_ready: the /load request
	if busy := load.StatesMS[StateOnCPU] + load.StatesMS[StateRunqueue]; busy < 0.9*ms(spin) {
		t.Errorf("%s: %.3f ms on CPU or waiting for one, the child computed for %s", load.Phase, busy, spin)
	}
	if blocked := load.StatesMS[StateBlocked] + load.StatesMS[StateFaults]; blocked < 0.5*ms(sleep) {
		t.Errorf("%s: %.3f ms blocked, the child slept %s", load.Phase, blocked, sleep)
	}
	if load.ModelBytes < modelSize || modelBytes > 2*modelSize {
		t.Errorf("model bytes read: %d in %s, %d in all; the file has %d", load.ModelBytes, load.Phase, modelBytes, modelSize)
	}
	// Exported once per phase and state.
	h := kernelHists(t, reg, "fraud", "fraud-00003")
	for _, ph := range want {
		for _, st := range anatStates {
			mfs, _ := reg.Gather()
			if !hasSeries(mfs, "pilotlight_bpf_cold_start_time_seconds", map[string]string{"phase": ph, "state": st, "revision": "fraud-00003"}) {
				t.Errorf("no pilotlight_bpf_cold_start_time_seconds for %s/%s", ph, st)
			}
		}
	}
	// Without the syscall-latency option no network syscall histogram is exported.
	if _, ok := h[mSyscall]; ok {
		t.Errorf("%s exported without the syscall-latency option", mSyscall)
	}
}

// TestOutboundConnectionIsReported has a tracked child connect to a
// listener the test runs: an outbound connection to something other than
// DNS, which must be logged, counted and listed with pid, peer and port.
// Inbound connections from the test process, the probes' parent, count as
// the router's.
func TestOutboundConnectionIsReported(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := newProbes(t, reg)
	srv := startServer(t)
	if err := p.Track(srv.pid, "recommend", "recommend-00009"); err != nil {
		t.Fatalf("Track: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	received := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		b, _ := io.ReadAll(c)
		c.Close()
		received <- string(b)
	}()
	client := &http.Client{Transport: &http.Transport{}}
	dialled := time.Now()
	get(t, client, "http://"+srv.addr+"/dial?addr="+ln.Addr().String())
	if got := <-received; got != "hello\n" {
		t.Fatalf("listener got %q", got)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	var found UnexpectedConnection
	waitFor(t, "the unexpected connection to be reported", 5*time.Second, func() bool {
		for _, u := range p.LatestConnections()["recommend/recommend-00009"] {
			if u.Peer == fmt.Sprintf("127.0.0.1:%d", port) {
				found = u
				return true
			}
		}
		return false
	})
	t.Logf("reported %s after %s", found, found.Time.Sub(dialled))
	if found.PID != srv.pid || found.Class != PeerLoopback {
		t.Errorf("reported %+v, want pid %d class %s", found, srv.pid, PeerLoopback)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if v := counter(mfs, "pilotlight_bpf_unexpected_connections_total", map[string]string{"revision": "recommend-00009"}); v != 1 {
		t.Errorf("unexpected connections counted %v, want 1", v)
	}
	if v := counter(mfs, "pilotlight_bpf_connections_total", map[string]string{"revision": "recommend-00009", "direction": DirectionOutbound, "peer_class": PeerLoopback}); v != 1 {
		t.Errorf("outbound loopback connections %v, want 1", v)
	}
	if v := counter(mfs, "pilotlight_bpf_connections_total", map[string]string{"revision": "recommend-00009", "direction": DirectionInbound, "peer_class": PeerRouter}); v < 1 {
		t.Errorf("inbound connections from the parent (the router) %v, want at least 1", v)
	}
	// At close, the bytes, counted in sequence space as tcplife does: the
	// child sent 6 (plus its SYN and FIN), received nothing (but a FIN).
	waitFor(t, "the connection's close", 5*time.Second, func() bool {
		mfs, _ := reg.Gather()
		return hasSeries(mfs, "pilotlight_bpf_connection_bytes", map[string]string{"direction": DirectionOutbound, "flow": "sent"})
	})
	mfs, _ = reg.Gather()
	for flow, want := range map[string][2]float64{"sent": {6, 8}, "received": {0, 1}} {
		h := histogram(mfs, "pilotlight_bpf_connection_bytes", map[string]string{"direction": DirectionOutbound, "flow": flow})
		if h == nil || h.GetSampleCount() != 1 || h.GetSampleSum() < want[0] || h.GetSampleSum() > want[1] {
			t.Errorf("outbound %s bytes: %v, want one connection with %v..%v", flow, h, want[0], want[1])
		}
	}
}

func matches(m *dto.Metric, want map[string]string) bool {
	for k, v := range want {
		if label(m, k) != v {
			return false
		}
	}
	return true
}

func hasSeries(mfs []*dto.MetricFamily, name string, want map[string]string) bool {
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if matches(m, want) {
				return true
			}
		}
	}
	return false
}

// counter sums the counters of name whose labels include want.
func counter(mfs []*dto.MetricFamily, name string, want map[string]string) float64 {
	var v float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if matches(m, want) {
				v += m.GetCounter().GetValue()
			}
		}
	}
	return v
}

func histogram(mfs []*dto.MetricFamily, name string, want map[string]string) *dto.Histogram {
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if matches(m, want) {
				return m.GetHistogram()
			}
		}
	}
	return nil
}

// BenchmarkSyscallPath measures what a system call of an untracked task
// costs with the syscall programs detached (the default outside cold
// starts) and attached (during cold starts, and always with the
// syscall-latency option): go test -run '^$' -bench SyscallPath ./bpf/
func BenchmarkSyscallPath(b *testing.B) {
	for _, attached := range []bool{false, true} {
		b.Run(fmt.Sprintf("syscall_programs_attached=%v", attached), func(b *testing.B) {
			newProbesWith(b, Config{SyscallLatency: attached})
			for b.Loop() {
				unix.Getppid()
			}
		})
	}
}

// netns is a network namespace the test made, with addresses on its lo:
// peers that are neither loopback nor the machine's own interfaces.
type netns struct {
	name string
	fd   int
}

func newNetns(t *testing.T, addrs ...string) *netns {
	t.Helper()
	name := fmt.Sprintf("plbpf-%d", os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	run("netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	run("-n", name, "link", "set", "lo", "up")
	for _, a := range addrs {
		run("-n", name, "addr", "add", a+"/32", "dev", "lo")
	}
	fd, err := unix.Open("/var/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return &netns{name: name, fd: fd}
}

// do runs f on an OS thread inside the namespace, then returns the thread
// to its own namespace. The thread must survive: a thread that started a
// child (Pdeathsig) and then died would kill the child.
func (n *netns) do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open this thread's netns: %w", err)
			return
		}
		defer unix.Close(home)
		if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", n.name, err)
			return
		}
		ferr := f()
		if err := unix.Setns(home, unix.CLONE_NEWNET); err != nil {
			// Stay locked: the thread is discarded with the goroutine.
			errc <- fmt.Errorf("leave netns %s: %w", n.name, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// TestConnectionToAnotherHostIsReported runs the child in a network
// namespace and has it connect to an address on that namespace's lo that
// is not a loopback address: peer class other, reported as unexpected.
func TestConnectionToAnotherHostIsReported(t *testing.T) {
	skipWithoutBPF(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("this test needs iproute2's ip (hack/deps): %v", err)
	}
	const peerAddr = "10.211.0.2"
	ns := newNetns(t, peerAddr)
	reg := prometheus.NewRegistry()
	p := newProbes(t, reg)

	// The child: `ip netns exec` enters the namespace and execs it, same pid.
	srv := startServerVia(t, []string{"ip", "netns", "exec", ns.name})
	addr, pid := srv.addr, srv.pid
	if err := p.Track(pid, "fraud", "fraud-00011"); err != nil {
		t.Fatalf("Track: %v", err)
	}

	var ln net.Listener
	if err := ns.do(func() (err error) { ln, err = net.Listen("tcp", peerAddr+":0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, a string) (c net.Conn, err error) {
		err = ns.do(func() (err error) { c, err = (&net.Dialer{}).DialContext(ctx, network, a); return err })
		return c, err
	}}}
	get(t, client, "http://"+addr+"/dial?addr="+ln.Addr().String())

	var found UnexpectedConnection
	waitFor(t, "the connection to be reported", 5*time.Second, func() bool {
		for _, u := range p.LatestConnections()["fraud/fraud-00011"] {
			if u.Peer == ln.Addr().String() {
				found = u
				return true
			}
		}
		return false
	})
	if found.PID != pid || found.Class != PeerOther {
		t.Errorf("reported %+v, want pid %d class %s", found, pid, PeerOther)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if v := counter(mfs, "pilotlight_bpf_connections_total", map[string]string{"revision": "fraud-00011", "direction": DirectionOutbound, "peer_class": PeerOther}); v != 1 {
		t.Errorf("outbound connections to other hosts %v, want 1", v)
	}
	// The test's own request came from the probes' parent: the router.
	if v := counter(mfs, "pilotlight_bpf_connections_total", map[string]string{"revision": "fraud-00011", "direction": DirectionInbound, "peer_class": PeerRouter}); v < 1 {
		t.Errorf("inbound connections from the parent %v, want at least 1", v)
	}
}

// unixClient is an HTTP client whose every connection goes to the Unix
// socket path, as the router's framed transport reaches an instance.
func unixClient(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}}
}

// An instance reached over its Unix socket (serve's framed transport) fires
// no TCP tracepoint on the request's path: the cold start's accept and
// first write, the socket-queue delay and the connection's accounting come
// from the Unix socket programs.
func TestProbesFollowAUnixSocket(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := newProbesWith(t, Config{ParentPID: os.Getpid(), Registerer: reg, ReadInterval: 100 * time.Millisecond, SocketQueue: true})
	sock := filepath.Join(t.TempDir(), "instance.sock")
	srv := startServer(t, socketEnv+"="+sock)
	if err := p.Track(srv.pid, "fraud", "fraud-00001"); err != nil {
		t.Fatalf("Track: %v", err)
	}
	// The engine's way: readiness over TCP, the ready mark, then requests
	// over the socket.
	poll := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	waitFor(t, "the test server's socket", 5*time.Second, func() bool { _, err := os.Stat(sock); return err == nil })
	get(t, poll, "http://"+srv.addr+"/v2/health/ready")
	ready := time.Now()
	p.Mark(srv.pid, MarkRequestArrival, ready)
	p.Mark(srv.pid, MarkReady, ready)

	client := unixClient(sock)
	// The first request opens the connection; user space attaches
	// on_sock_read when it learns of it, and the reads after are measured.
	clientSum := get(t, client, "http://instance/")
	waitFor(t, "on_sock_read to attach for the Unix connection", 5*time.Second, func() bool { return attachedOf(p, []string{unixReadProgram}) == 1 })
	// The readiness poll's TCP connection is closed: no TCP read of the
	// machine runs on_tcp_read while requests come over the socket.
	waitFor(t, "on_tcp_read detached once no TCP connection is open", 5*time.Second, func() bool { return attachedOf(p, socketQueuePrograms) == 0 })
	const requests = 40
	for range requests {
		clientSum += get(t, client, "http://instance/")
	}
	var tl Timeline
	waitFor(t, "the cold-start timeline over the socket", 5*time.Second, func() bool {
		var ok bool
		tl, ok = p.LatestTimelines()["fraud/fraud-00001"]
		return ok
	})
	at := map[string]TimelineEvent{}
	for _, e := range tl.Events {
		at[e.Name] = e
	}
	order := []string{EventExec, EventListen, EventFirstAccept, MarkReady, EventAccept, EventFirstWrite}
	for i, name := range order {
		e, ok := at[name]
		if !ok {
			t.Fatalf("timeline has no %s: %+v", name, tl.Events)
		}
		if i > 0 && e.Time.Before(at[order[i-1]].Time) {
			t.Errorf("%s at %s is before %s at %s", name, e.Time, order[i-1], at[order[i-1]].Time)
		}
	}
	// The accept is the socket's connection, not a TCP one: no TCP
	// connection reached the instance after the readiness poll.
	if v := tl.Phases[PhaseAcceptToFirstWrite]; v <= 0 || v > clientSum.Seconds()*1000 {
		t.Errorf("accept_to_first_write = %v ms, want > 0 and within the requests' %v", v, clientSum)
	}

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	router := map[string]string{"function": "fraud", "revision": "fraud-00001", "direction": DirectionInbound, "peer_class": PeerRouter}
	// One TCP connection (the readiness poll) and one to the socket, both from this process (ParentPID).
	if n := counter(mfs, "pilotlight_bpf_connections_total", router); n != 2 {
		t.Errorf("inbound connections from the router: %v, want 2 (the TCP readiness poll and the socket's)", n)
	}
	h := kernelHists(t, reg, "fraud", "fraud-00001")
	if n := h[mSockq].GetSampleCount(); n < requests {
		t.Errorf("%s: %d samples for %d requests over the socket", mSockq, n, requests)
	}
	if s := h[mSockq].GetSampleSum(); s <= 0 || s > clientSum.Seconds() {
		t.Errorf("%s: %.3f ms in total, want > 0 and below the requests' own %.3f ms", mSockq, s*1000, clientSum.Seconds()*1000)
	}

	// Closing the socket's connection: the instance reads its end of file,
	// and the connection's received bytes are observed (every request's).
	client.CloseIdleConnections()
	recv := map[string]string{"function": "fraud", "revision": "fraud-00001", "direction": DirectionInbound, "peer_class": PeerRouter, "flow": "received"}
	var bytes *dto.Histogram
	waitFor(t, "the socket's connection to close", 5*time.Second, func() bool {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		bytes = histogram(mfs, "pilotlight_bpf_connection_bytes", recv)
		return bytes != nil && bytes.GetSampleCount() == 2
	})
	// The TCP poll's request is ~100 bytes, the socket's 40 requests more than 40 × 50.
	if sum := bytes.GetSampleSum(); sum < requests*50 {
		t.Errorf("received bytes of the closed connections: %v, want the socket's %d requests' (> %d)", sum, requests, requests*50)
	}
	t.Logf("socket queue: %d samples, %.3f ms; connections closed: %d, %v bytes received; client %.3f ms",
		h[mSockq].GetSampleCount(), h[mSockq].GetSampleSum()*1000, bytes.GetSampleCount(), bytes.GetSampleSum(), clientSum.Seconds()*1000)
}

// Without a ParentPID (the node agent) nobody is the router: a connection
// to an instance's Unix socket is counted as a loopback peer's, and its
// socket-queue delay is measured all the same.
func TestUnixSocketPeerWithoutParent(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := newProbesWith(t, Config{Registerer: reg, ReadInterval: 100 * time.Millisecond, SocketQueue: true})
	sock := filepath.Join(t.TempDir(), "instance.sock")
	srv := startServer(t, socketEnv+"="+sock)
	waitFor(t, "the test server's socket", 5*time.Second, func() bool { _, err := os.Stat(sock); return err == nil })
	if err := p.Track(srv.pid, "recommend", "recommend-00001"); err != nil {
		t.Fatalf("Track: %v", err)
	}
	client := unixClient(sock)
	get(t, client, "http://instance/")
	waitFor(t, "on_sock_read to attach for the Unix connection", 5*time.Second, func() bool { return attachedOf(p, []string{unixReadProgram}) == 1 })
	for range 10 {
		get(t, client, "http://instance/")
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	base := map[string]string{"function": "recommend", "revision": "recommend-00001", "direction": DirectionInbound}
	if n := counter(mfs, "pilotlight_bpf_connections_total", with(base, "peer_class", PeerLoopback)); n != 1 {
		t.Errorf("loopback connections to the socket: %v, want 1", n)
	}
	if n := counter(mfs, "pilotlight_bpf_connections_total", with(base, "peer_class", PeerRouter)); n != 0 {
		t.Errorf("router connections without a ParentPID: %v, want 0", n)
	}
	if h := kernelHists(t, reg, "recommend", "recommend-00001"); h[mSockq].GetSampleCount() < 10 {
		t.Errorf("%s: %d samples for 10 requests over the socket", mSockq, h[mSockq].GetSampleCount())
	}
}

// with is m and one more label.
func with(m map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for mk, mv := range m {
		out[mk] = mv
	}
	return out
}
