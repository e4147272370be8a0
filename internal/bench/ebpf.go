package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/pilotlight/pilotlight/bpf"
	"github.com/pilotlight/pilotlight/internal/loadgen"
)

// ebpfPairs is how many times the bench alternates the modes: the
// machine's drift falls on every mode alike, and the median of the
// per-round ratios resists one noisy round.
const ebpfPairs = 3

// ebpfMode is one way of running serve in the overhead bench.
type ebpfMode struct {
	name string
	args []string
}

var (
	ebpfOff   = ebpfMode{"off", nil}
	ebpfModes = []ebpfMode{
		ebpfOff,
		{"on", []string{"--ebpf"}},
		{"on, --ebpf-syscall-latency", []string{"--ebpf", "--ebpf-syscall-latency"}},
	}
)

// ebpfRun is one measured load of one mode.
type ebpfRun struct {
	res *loadgen.Result
	// cpu is the CPU time the request path used during the load.
	cpu pathCPU
	// machine is the whole machine's busy CPU seconds during the load
	// (other sessions' included): context for cpu.
	machine float64
	// bpfSeconds is CPU time spent in the probes' programs during the load
	// (kernel BPF statistics, only when the run enabled them), per program.
	bpfSeconds map[string]float64
	bpfRuns    map[string]float64
}

// perRequest is the path's CPU per answered request, in seconds.
func (r ebpfRun) perRequest() float64 {
	if r.res.Succeeded == 0 {
		return 0
	}
	return r.cpu.total() / float64(r.res.Succeeded)
}

// EBPF compares throughput, p99 and CPU per request through the router at
// c=32 with the probes off, on, and on with network syscall timing. The
// figures the goals are judged on come from one continuous load whose
// alternate half-second windows have the probes attached (see
// ebpfInterleaved): a shared machine's drift cannot tell seconds-apart
// loads apart at 2%, but falls alike on adjacent windows. CPU per request
// (serve, its instance and the load generator, from /proc) is the second
// figure it does not blur. The deployed form, serve --ebpf in its own
// process, is loaded too, in rounds alternating with serve without probes,
// and reported beside them. A last load per probe set enables the kernel's
// BPF statistics to count each program's run time (they cost time
// themselves, so they stay off in the compared windows).
func EBPF(ctx context.Context, e Env) ([]Row, error) {
	root, m, err := e.oneInstanceRoot()
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(root)
	rows, err := ebpfInterleaved(ctx, e, root, m.Name, []ebpfProbeSet{
		ebpfNoProgram,
		{name: "on", socketQueue: true},
		{name: "on, --ebpf-socket-queue=false"},
		{name: "on, --ebpf-syscall-latency", socketQueue: true, syscallLatency: true},
	}, ebpfWindowPairs(e.Duration))
	if err != nil {
		return nil, err
	}
	runs, err := ebpfRounds(ctx, e, root, m.Name, ebpfModes, ebpfPairs)
	if err != nil {
		return nil, err
	}
	rows = append(rows, ebpfRows(runs, ebpfModes, e.instanceTransport(), false)...)
	// Where a cold start's milliseconds go, through each path.
	for _, pool := range []int{0, 1} {
		r, err := ColdStartAnatomy(ctx, e, pool, coldStartsPerSource)
		if err != nil {
			return nil, fmt.Errorf("cold-start anatomy (pool size %d): %w", pool, err)
		}
		rows = append(rows, r...)
	}
	return rows, nil
}

// ebpfNoProgram loads the probes and attaches nothing: user space alone,
// and the interleaved method's noise.
var ebpfNoProgram = ebpfProbeSet{name: "loaded, no program attached", programs: []string{}}

// ebpfHotPrograms are the programs that run per request (the rest run per
// process, thread or connection).
var ebpfHotPrograms = []string{"on_switch", "on_tcp_read", "on_data_ready", "on_sock_read", "on_sock_state"}

// EBPFPrograms finds what each probe costs, in the interleaved load: the
// probes loaded with no program attached (user space alone: the ring
// buffer reader, the histogram reads), each per-request program attached
// alone, and all.
func EBPFPrograms(ctx context.Context, e Env) ([]Row, error) {
	root, m, err := e.oneInstanceRoot()
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(root)
	sets := []ebpfProbeSet{ebpfNoProgram}
	for _, prog := range ebpfHotPrograms {
		sets = append(sets, ebpfProbeSet{name: prog + " alone", programs: []string{prog}, socketQueue: true})
	}
	sets = append(sets, ebpfProbeSet{name: "on (serve's default)", socketQueue: true}, ebpfProbeSet{name: "on, --ebpf-socket-queue=false"})
	return ebpfInterleaved(ctx, e, root, m.Name, sets, ebpfWindowPairs(e.Duration))
}

// ebpfRounds loads each mode once per round, rounds times.
func ebpfRounds(ctx context.Context, e Env, root, function string, modes []ebpfMode, rounds int) ([][]ebpfRun, error) {
	runs := make([][]ebpfRun, len(modes))
	for round := range rounds {
		for i, mode := range modes {
			fmt.Fprintf(os.Stderr, "bench ebpf: round %d/%d, probes %s\n", round+1, rounds, mode.name)
			r, err := ebpfLoad(ctx, e, root, function, mode)
			if err != nil {
				return nil, fmt.Errorf("probes %s: %w", mode.name, err)
			}
			runs[i] = append(runs[i], r)
		}
	}
	return runs, nil
}

// ebpfWarmup is long enough for the cold start's dynamic programs
// (on_wakeup stays attached up to a second after the ready mark) to be
// detached before the measured load.
const ebpfWarmup = 1500 * time.Millisecond

// ebpfLoad starts serve in mode, warms it up and measures one load.
func ebpfLoad(ctx context.Context, e Env, root, function string, mode ebpfMode) (ebpfRun, error) {
	// The same transport in every mode: the framed socket unless
	// e.ServeArgs says --instance-http (the probes follow both).
	args := slices.Concat([]string{"--functions", root, "--pool-size", "0", "--flags", ""}, e.ServeArgs, mode.args)
	s, err := StartServe(e.Bin, args, e.Log)
	if err != nil {
		return ebpfRun{}, err
	}
	defer s.Stop()
	base := "http://" + s.Addr
	body, err := V2Body(base, function, 1)
	if err != nil {
		return ebpfRun{}, err
	}
	bodyFn := func(int, int) []byte { return body }
	url := base + "/v2/models/" + function + "/infer"
	loadgen.Run(ctx, loadgen.Config{URL: url, Concurrency: 32, Duration: ebpfWarmup, Body: bodyFn})
	cpu0, mach0 := readPathCPU(s.Pid()), machineBusy()
	r := ebpfRun{res: loadgen.Run(ctx, loadgen.Config{URL: url, Concurrency: 32, Duration: e.Duration, Body: bodyFn})}
	r.cpu, r.machine = readPathCPU(s.Pid()).sub(cpu0), machineBusy()-mach0
	return r, nil
}

// ebpfRows compares every mode with modes[0] (probes off), round by round;
// with goals, the ratios are judged against the 2% budget.
func ebpfRows(runs [][]ebpfRun, modes []ebpfMode, transport string, goals bool) []Row {
	var rows []Row
	merged := make([]loadgen.Result, len(modes))
	for i, mode := range modes {
		var cpu pathCPU
		var machine float64
		for _, r := range runs[i] {
			merged[i].Merge(r.res)
			cpu = cpu.add(r.cpu)
			machine += r.machine
		}
		n := float64(merged[i].Succeeded)
		rows = append(rows, Row{Name: fmt.Sprintf("serve with probes %s, through the router (%s), c=32 (%d loads, one serve each)", mode.name, transport, len(runs[i])),
			Value: fmt.Sprintf("%.0f req/s, p99 %s; CPU per request %.1f µs (router %.1f + instance %.1f + load generator %.1f); machine busy %.0f%% of its CPUs",
				merged[i].RPS(), ms(merged[i].Quantile(.99)), 1e6*cpu.total()/n, 1e6*cpu.serve/n, 1e6*cpu.instances/n, 1e6*cpu.loadgen/n,
				100*machine/(merged[i].Elapsed.Seconds()*float64(runtime.NumCPU())))})
	}
	for i := 1; i < len(modes); i++ {
		var tput, p99, cpu, extra []float64
		for round := range runs[i] {
			off, on := runs[0][round], runs[i][round]
			tput = append(tput, on.res.RPS()/off.res.RPS())
			p99 = append(p99, float64(on.res.Quantile(.99))/float64(off.res.Quantile(.99)))
			cpu = append(cpu, on.perRequest()/off.perRequest())
			extra = append(extra, 1e6*(on.perRequest()-off.perRequest()))
		}
		t, p, c := median(tput), median(p99), median(cpu)
		add := func(name string, v float64, ge bool) {
			r := Row{Name: name, Value: fmt.Sprintf("%.3f", v)}
			if goals && ge {
				r.Goal, r.Met = "≥ 0.98", met(v >= 0.98)
			} else if goals {
				r.Goal, r.Met = "≤ 1.02", met(v <= 1.02)
			}
			rows = append(rows, r)
		}
		add(fmt.Sprintf("throughput ratio, serve with probes %s / off (median of %d rounds: %s)", modes[i].name, len(tput), ratios(tput)), t, true)
		add(fmt.Sprintf("p99 ratio, serve with probes %s / off (median of %d rounds: %s)", modes[i].name, len(p99), ratios(p99)), p, false)
		add(fmt.Sprintf("CPU per request ratio, serve with probes %s / off (router + instance + load generator; median of %d rounds: %s; extra µs per request: %s)",
			modes[i].name, len(cpu), ratios(cpu), ratios(extra)), c, false)
	}
	return rows
}

// programRows reports the kernel's own account of the programs' CPU time
// in one load with BPF statistics on.
func programRows(mode ebpfMode, r ebpfRun, d time.Duration) []Row {
	var cpu float64
	for _, v := range r.bpfSeconds {
		cpu += v
	}
	if cpu == 0 || r.res.Succeeded == 0 {
		return nil
	}
	wall := d.Seconds()
	return []Row{{Name: fmt.Sprintf("CPU in BPF programs, probes %s (kernel BPF statistics, one load of %.0f req/s)", mode.name, r.res.RPS()),
		Value: fmt.Sprintf("%.0f ns per request, %.2f%% of one CPU; %s", 1e9*cpu/float64(r.res.Succeeded), 100*cpu/wall, topPrograms(r.bpfSeconds, r.bpfRuns, float64(r.res.Succeeded)))}}
}

// topPrograms lists the programs that ran, costliest first: each one's
// program time per request, as ns per run × runs per request.
func topPrograms(progs, runs map[string]float64, requests float64) string {
	names := make([]string, 0, len(progs))
	for p := range progs {
		names = append(names, p)
	}
	slices.SortFunc(names, func(a, b string) int {
		switch {
		case progs[a] > progs[b]:
			return -1
		case progs[a] < progs[b]:
			return 1
		}
		return strings.Compare(a, b)
	})
	var parts []string
	for _, p := range names {
		if n := runs[p]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f ns per request (%.0f ns × %.1f runs)", p, 1e9*progs[p]/requests, 1e9*progs[p]/n, n/requests))
		}
	}
	return strings.Join(parts, ", ")
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ratios(v []float64) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = fmt.Sprintf("%.3f", x)
	}
	return strings.Join(parts, " ")
}

// coldStartsPerSource is how many cold starts the anatomy rows average.
const coldStartsPerSource = 3

// anatomyTimeline is the part of /admin/functions' cold_start_timeline the
// anatomy rows read.
type anatomyTimeline struct {
	PID     int    `json:"pid"`
	Source  string `json:"source"`
	Anatomy []struct {
		Phase       string             `json:"phase"`
		WallMS      float64            `json:"wall_ms"`
		StatesMS    map[string]float64 `json:"states_ms"`
		MajorFaults float64            `json:"major_faults"`
		ModelBytes  float64            `json:"model_bytes"`
	} `json:"anatomy"`
}

func latestTimeline(base, function, revision string) (*anatomyTimeline, error) {
	resp, err := http.Get(base + "/admin/functions")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var a struct {
		Functions []struct {
			Name      string `json:"name"`
			Revisions []struct {
				Name     string           `json:"name"`
				Timeline *anatomyTimeline `json:"cold_start_timeline"`
			} `json:"revisions"`
		} `json:"functions"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		return nil, err
	}
	for _, f := range a.Functions {
		for _, r := range f.Revisions {
			if f.Name == function && r.Name == revision {
				return r.Timeline, nil
			}
		}
	}
	return nil, nil
}

// ColdStartAnatomy scales the function from zero n times with the probes
// on, through a fresh exec (poolSize 0) or the warm pool, and reports the
// mean of each anatomy phase and state.
func ColdStartAnatomy(ctx context.Context, e Env, poolSize, n int) ([]Row, error) {
	ct, err := e.coldStartTarget([]string{"--pool-size", strconv.Itoa(poolSize), "--ebpf"})
	if err != nil {
		return nil, err
	}
	defer ct.close()
	m, base, body, url := ct.m, ct.base, ct.body, ct.url
	rev := m.DefaultRevision()
	type sums struct {
		wall, faults, bytes float64
		states              map[string]float64
	}
	var order []string
	total := map[string]*sums{}
	lastPID := 0
	if tl, err := latestTimeline(base, m.Name, rev); err == nil && tl != nil {
		lastPID = tl.PID
	}
	for i := 0; i < n; i++ {
		if err := waitFor(ctx, fmt.Sprintf("%s to scale to zero", rev), func() (bool, error) {
			a, err := GetAdmin(base)
			if err != nil {
				return false, err
			}
			pids, _, _ := a.Instances(m.Name, rev)
			return len(pids) == 0 && len(a.WarmPool) >= poolSize, nil
		}); err != nil {
			return nil, err
		}
		resp, err := http.Post(url, "application/json", bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return nil, fmt.Errorf("cold request: %s", resp.Status)
		}
		var tl *anatomyTimeline
		if err := waitFor(ctx, "the cold start's timeline", func() (bool, error) {
			tl, err = latestTimeline(base, m.Name, rev)
			return err == nil && tl != nil && tl.PID != lastPID && len(tl.Anatomy) > 0, err
		}); err != nil {
			return nil, err
		}
		lastPID = tl.PID
		for _, ph := range tl.Anatomy {
			if total[ph.Phase] == nil {
				total[ph.Phase] = &sums{states: map[string]float64{}}
				order = append(order, ph.Phase)
			}
			t := total[ph.Phase]
			t.wall += ph.WallMS
			t.faults += ph.MajorFaults
			t.bytes += ph.ModelBytes
			for st, v := range ph.StatesMS {
				t.states[st] += v
			}
		}
	}
	source := "warm pool"
	if poolSize == 0 {
		source = "exec"
	}
	var rows []Row
	var wall float64
	for _, ph := range order {
		t := total[ph]
		k := float64(n)
		wall += t.wall / k
		rows = append(rows, Row{Name: fmt.Sprintf("%s cold start via %s, %s (mean of %d)", m.Name, source, ph, n),
			Value: fmt.Sprintf("%.1f ms = oncpu %.1f + runqueue %.1f + faults %.1f + blocked %.1f; %.0f major faults, %.0f model bytes",
				t.wall/k, t.states["oncpu"]/k, t.states["runqueue"]/k, t.states["faults"]/k, t.states["blocked"]/k, t.faults/k, t.bytes/k)})
	}
	rows = append(rows, Row{Name: fmt.Sprintf("%s cold start via %s, to the first response write (mean of %d)", m.Name, source, n), Value: fmt.Sprintf("%.1f ms", wall)})
	return rows, nil
}

// waitFor polls cond every 20 ms for up to 30 s.
func waitFor(ctx context.Context, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waited 30s for %s", what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ebpfWindow is one window of the interleaved load; a pair is one window
// with the probes attached and one without, in alternating order.
const ebpfWindow = 250 * time.Millisecond

// ebpfWindowPairs is how many pairs an interleaved comparison loads for a
// --duration of d (48 for 3 s): a busy neighbour moves one pair's ratio
// by ±10%, and the median of n pairs by about 1/√n of that.
func ebpfWindowPairs(d time.Duration) int {
	return max(16, int(4*d/ebpfWindow))
}

// ebpfProbeSet is one set of probes the interleaved load alternates.
type ebpfProbeSet struct {
	name           string
	syscallLatency bool
	socketQueue    bool
	programs       []string // nil: all
}

// windowRun is one window of an interleaved load.
type windowRun struct {
	res *loadgen.Result
	cpu pathCPU
}

func (w windowRun) perRequest() float64 {
	if w.res.Succeeded == 0 {
		return 0
	}
	return w.cpu.total() / float64(w.res.Succeeded)
}

// ebpfInterleaved is the comparison a shared machine blurs least: one
// serve without probes under one continuous load at c=32, and this process
// loading the probes and tracking serve's instance as serve --ebpf does once
// the instance's cold start is over (the cold-start programs detached, no
// timeline open), attached in every other quarter-second window.
// Neighbours' load drifts over seconds; adjacent windows see nearly the
// same machine, and the median of per-pair ratios drops the pairs a burst
// hit. The set "loaded, no program attached" measures the method's own
// resolution: its ratios would be 1 but for noise.
func ebpfInterleaved(ctx context.Context, e Env, root, function string, sets []ebpfProbeSet, pairs int) ([]Row, error) {
	m, err := e.manifest()
	if err != nil {
		return nil, err
	}
	rev := m.DefaultRevision()
	var rows []Row
	for _, set := range sets {
		fmt.Fprintf(os.Stderr, "bench ebpf: %s, %d pairs of %s windows\n", set.name, pairs, ebpfWindow)
		r, err := ebpfInterleavedSet(ctx, e, root, function, rev, set, pairs)
		if err != nil {
			return nil, err
		}
		rows = append(rows, r...)
	}
	return rows, nil
}

// ebpfInterleavedSet loads one probe set against a serve of its own. The
// instance is reached over its framed socket, as serve --ebpf does, or
// over HTTP when e.ServeArgs says --instance-http. The probes follow an
// instance's connections opened after Track, as in serve (which tracks
// from the spawn): a serve per set makes the router open the load's
// connections after it (at the warm-up), where a serve shared by the sets
// kept the first set's, which no later set followed. Only the connection
// of the instance's first request is older than Track.
func ebpfInterleavedSet(ctx context.Context, e Env, root, function, rev string, set ebpfProbeSet, pairs int) ([]Row, error) {
	s, err := StartServe(e.Bin, slices.Concat([]string{"--functions", root, "--pool-size", "0", "--flags", ""}, e.ServeArgs), e.Log)
	if err != nil {
		return nil, err
	}
	defer s.Stop()
	base := "http://" + s.Addr
	body, err := V2Body(base, function, 1)
	if err != nil {
		return nil, err
	}
	pid, _, err := OneInstance(ctx, base, function, rev)
	if err != nil {
		return nil, err
	}
	client := loadgen.NewClient(32)
	cfg := loadgen.Config{URL: base + "/v2/models/" + function + "/infer", Concurrency: 32, Body: func(int, int) []byte { return body }}
	window := func(d time.Duration) windowRun {
		c := cfg
		c.Duration = d
		cpu0 := readPathCPU(s.Pid())
		res := loadgen.RunWith(ctx, client, c)
		return windowRun{res: res, cpu: readPathCPU(s.Pid()).sub(cpu0)}
	}
	var rows []Row
	reg := prometheus.NewRegistry()
	// No ParentPID: Track then follows no cold start (the instance is
	// warm), as in serve once the instance's first response is out.
	p, err := bpf.New(bpf.Config{Registerer: reg, SyscallLatency: set.syscallLatency, SocketQueue: set.socketQueue, Programs: set.programs})
	if err != nil {
		return nil, fmt.Errorf("load the probes (%s): %w", set.name, err)
	}
	if err := p.Track(pid, function, rev); err != nil {
		p.Close()
		return nil, err
	}
	window(ebpfWarmup)
	var on, off []windowRun
	for i := range pairs {
		for j := range 2 {
			attached := (i+j)%2 == 0 // on, off; then off, on
			if attached {
				err = p.Resume()
			} else {
				p.Pause()
			}
			if err != nil {
				p.Close()
				return nil, fmt.Errorf("attach the probes (%s): %w", set.name, err)
			}
			w := window(ebpfWindow)
			if attached {
				on = append(on, w)
			} else {
				off = append(off, w)
			}
		}
	}
	if err := p.Resume(); err != nil {
		p.Close()
		return nil, err
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("enable BPF statistics (per-program CPU figures): %w", err)
	}
	before, beforeRuns := gatheredProgramStats(reg)
	w := window(e.Duration)
	after, afterRuns := gatheredProgramStats(reg)
	stats.Close()
	p.Close()
	rows = append(rows, interleavedRows(set.name, e.instanceTransport(), on, off)...)
	r := ebpfRun{res: w.res, bpfSeconds: map[string]float64{}, bpfRuns: map[string]float64{}}
	for prog, v := range after {
		r.bpfSeconds[prog] = v - before[prog]
		r.bpfRuns[prog] = afterRuns[prog] - beforeRuns[prog]
	}
	rows = append(rows, programRows(ebpfMode{name: set.name}, r, e.Duration)...)
	return rows, nil
}

// interleavedRows compares the windows with the probes attached with
// their pairs without.
func interleavedRows(name, transport string, on, off []windowRun) []Row {
	var tput, cpu, extra []float64
	var onRes, offRes loadgen.Result
	for i := range on {
		tput = append(tput, on[i].res.RPS()/off[i].res.RPS())
		cpu = append(cpu, on[i].perRequest()/off[i].perRequest())
		extra = append(extra, 1e6*(on[i].perRequest()-off[i].perRequest()))
		onRes.Merge(on[i].res)
		offRes.Merge(off[i].res)
	}
	t, c, x := median(tput), median(cpu), median(extra)
	p := float64(onRes.Quantile(.99)) / float64(offRes.Quantile(.99))
	// The same over all windows of each state: less moved by one burst's
	// pair, more by a drift that favours one state's windows.
	var onCPU, offCPU pathCPU
	for i := range on {
		onCPU, offCPU = onCPU.add(on[i].cpu), offCPU.add(off[i].cpu)
	}
	aggCPU := (onCPU.total() / float64(onRes.Succeeded)) / (offCPU.total() / float64(offRes.Succeeded))
	q1, q3 := quartiles(tput)
	c1, c3 := quartiles(cpu)
	desc := fmt.Sprintf("probes %s vs off, alternate %s windows of one load at c=32 over the %s (%d pairs)", name, ebpfWindow, transport, len(on))
	return []Row{
		{Name: desc + ": req/s on, off; CPU per request on, off (all windows)", Value: fmt.Sprintf("%.0f, %.0f (ratio %.3f); p99 %s, %s; %.1f, %.1f µs (ratio %.3f)",
			onRes.RPS(), offRes.RPS(), onRes.RPS()/offRes.RPS(), ms(onRes.Quantile(.99)), ms(offRes.Quantile(.99)),
			1e6*onCPU.total()/float64(onRes.Succeeded), 1e6*offCPU.total()/float64(offRes.Succeeded), aggCPU)},
		{Name: fmt.Sprintf("%s: throughput ratio (median of pairs; quartiles %.3f–%.3f)", desc, q1, q3),
			Value: fmt.Sprintf("%.3f", t), Goal: "≥ 0.98", Met: met(t >= 0.98)},
		{Name: desc + ": p99 ratio (all windows)", Value: fmt.Sprintf("%.3f", p), Goal: "≤ 1.02", Met: met(p <= 1.02)},
		{Name: fmt.Sprintf("%s: CPU per request ratio, router + instance + load generator (median of pairs; quartiles %.3f–%.3f)", desc, c1, c3),
			Value: fmt.Sprintf("%.3f (%+.1f µs per request)", c, x), Goal: "≤ 1.02", Met: met(c <= 1.02)},
	}
}

// quartiles are v's first and third quartiles.
func quartiles(v []float64) (float64, float64) {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0, 0
	}
	return s[len(s)/4], s[(3*len(s))/4]
}

// gatheredProgramStats reads the probes' per-program run time and runs
// from their registry.
func gatheredProgramStats(reg *prometheus.Registry) (seconds, runs map[string]float64) {
	seconds, runs = map[string]float64{}, map[string]float64{}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		var into map[string]float64
		switch mf.GetName() {
		case "pilotlight_bpf_program_run_seconds_total":
			into = seconds
		case "pilotlight_bpf_program_runs_total":
			into = runs
		default:
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "program" {
					into[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return seconds, runs
}
