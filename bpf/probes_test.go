package bpf

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
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

// testServer is a tiny HTTP server on 127.0.0.1:0 that prints its address.
func testServer() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("listening %s\n", ln.Addr())
	_ = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A little work, so a request is more than a syscall or two.
		sum := 0
		for i := range 20000 {
			sum += i * i
		}
		fmt.Fprintf(w, "ok %d\n", sum)
	}))
}

// child is a running testServer.
type child struct {
	cmd  *exec.Cmd
	pid  int
	addr string
}

func startServer(t testing.TB) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), serverEnv+"=1")
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

// newProbes loads the probes, skipping only when BPF is truly unavailable.
func newProbes(t testing.TB, reg prometheus.Registerer) *Probes {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("eBPF probes need root (CAP_BPF and CAP_PERFMON); running as uid", os.Geteuid())
	}
	p, err := New(Config{ParentPID: os.Getpid(), Registerer: reg, ReadInterval: 100 * time.Millisecond})
	if err != nil {
		var le *LoadError
		if errors.As(err, &le) && le.Reason != reasonVerifier {
			t.Skipf("BPF unavailable here: %v (cause: %v)", err, le.Err)
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
	p := newProbes(t, reg)
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
	order := []string{EventExec, EventBind, EventListen, EventFirstAccept, MarkReady, EventAccept, EventFirstWrite}
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
	for range 20 {
		get(t, client, "http://"+srv.addr+"/")
	}
	time.Sleep(200 * time.Millisecond)
	after := kernelHists(t, reg, "fraud", "fraud-00001")
	for _, name := range []string{mRunq, mSockq, mSyscall} {
		if b, a := before[name].GetSampleCount(), after[name].GetSampleCount(); a != b || b == 0 {
			t.Errorf("%s after Untrack: %d samples, before %d (want equal and non-zero)", name, a, b)
		}
	}
	if got := gauge(t, reg, "pilotlight_bpf_tracked_instances"); got != 0 {
		t.Errorf("tracked instances after Untrack = %v", got)
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
	if h := kernelHists(t, reg, "recommend", "recommend-00001"); h[mSyscall].GetSampleCount() == 0 {
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

func TestProgramsLoadWithinBudget(t *testing.T) {
	p := newProbes(t, nil)
	if len(p.links) != len(p.coll.Programs) || len(p.links) != 10 {
		t.Errorf("%d links for %d programs, want 10 attached", len(p.links), len(p.coll.Programs))
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
		verified, _ := info.VerifiedInstructions()
		t.Logf("program %-16s %4d instructions (xlated), %5d verified", name, len(insns), verified)
	}
	for name, m := range p.coll.Maps {
		info, err := m.Info()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Logf("map %-10s %-13s key %2d value %4d max_entries %6d", name, info.Type, info.KeySize, info.ValueSize, info.MaxEntries)
	}
}

func TestProbesTimelineOfAWarmPoolProcess(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := newProbes(t, reg)
	// Started ahead of demand: exec, bind and listen happen untracked.
	srv := startServer(t)
	poll := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	get(t, poll, "http://"+srv.addr+"/v2/health/live")
	time.Sleep(50 * time.Millisecond)

	arrival := time.Now()
	if err := p.Track(srv.pid, "recommend", "recommend-00002"); err != nil {
		t.Fatalf("Track: %v", err)
	}
	p.Mark(srv.pid, MarkSpecialiseStart, time.Now())
	p.Mark(srv.pid, MarkRequestArrival, arrival)
	get(t, poll, "http://"+srv.addr+"/admin/specialise")
	p.Mark(srv.pid, MarkReady, time.Now())
	client := &http.Client{Transport: &http.Transport{}}
	for range 5 {
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
		t.Errorf("%s: %d samples for 7 requests", mSockq, h[mSockq].GetSampleCount())
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
