package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/pilotlight/pilotlight/internal/loadgen"
)

// ebpfPairs is how many times the bench alternates probes off, on, and on
// with syscall latency: the machine's drift falls on every mode alike, and
// the median of the per-round ratios resists one noisy round.
const ebpfPairs = 3

// ebpfMode is one way of running serve in the overhead bench.
type ebpfMode struct {
	name string
	args []string
}

var ebpfModes = []ebpfMode{
	{"off", nil},
	{"on", []string{"--ebpf"}},
	{"on, --ebpf-syscall-latency", []string{"--ebpf", "--ebpf-syscall-latency"}},
}

// ebpfRun is one measured load of one mode.
type ebpfRun struct {
	res *loadgen.Result
	// bpfSeconds is CPU time spent in the probes' programs during the load
	// (kernel BPF statistics), per program.
	bpfSeconds map[string]float64
	bpfRuns    map[string]float64
}

// EBPF compares throughput and p99 through the router at c=32 with the
// probes off, on, and on with network syscall timing, alternating in the
// same run, and reads the kernel's own count of the time spent in each
// program (BPF_ENABLE_STATS) while the probes are on.
func EBPF(ctx context.Context, e Env) ([]Row, error) {
	root, m, err := e.oneInstanceRoot()
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(root)
	// The kernel counts run time per program only while statistics are on;
	// they go off again when this descriptor is closed.
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err == nil {
		defer stats.Close()
	} else {
		fmt.Fprintf(os.Stderr, "bench ebpf: no per-program CPU figures: enable BPF statistics: %v\n", err)
	}
	run := func(mode ebpfMode) (ebpfRun, error) {
		args := append([]string{"--functions", root, "--pool-size", "0", "--flags", ""}, mode.args...)
		s, err := StartServe(e.Bin, args, e.Log)
		if err != nil {
			return ebpfRun{}, err
		}
		defer s.Stop()
		base := "http://" + s.Addr
		body, err := V2Body(base, m.Name, 1)
		if err != nil {
			return ebpfRun{}, err
		}
		bodyFn := func(int, int) []byte { return body }
		url := base + "/v2/models/" + m.Name + "/infer"
		loadgen.Run(ctx, loadgen.Config{URL: url, Concurrency: 32, Requests: 2000, Body: bodyFn})
		before, beforeRuns, _ := programStats(base + "/metrics")
		r := ebpfRun{res: loadgen.Run(ctx, loadgen.Config{URL: url, Concurrency: 32, Duration: e.Duration, Body: bodyFn})}
		after, afterRuns, _ := programStats(base + "/metrics")
		r.bpfSeconds, r.bpfRuns = map[string]float64{}, map[string]float64{}
		for prog, v := range after {
			r.bpfSeconds[prog] = v - before[prog]
			r.bpfRuns[prog] = afterRuns[prog] - beforeRuns[prog]
		}
		return r, nil
	}
	runs := make([][]ebpfRun, len(ebpfModes))
	for round := range ebpfPairs {
		for i, mode := range ebpfModes {
			fmt.Fprintf(os.Stderr, "bench ebpf: round %d/%d, probes %s\n", round+1, ebpfPairs, mode.name)
			r, err := run(mode)
			if err != nil {
				return nil, fmt.Errorf("probes %s: %w", mode.name, err)
			}
			runs[i] = append(runs[i], r)
		}
	}
	var rows []Row
	merged := make([]loadgen.Result, len(ebpfModes))
	for i, mode := range ebpfModes {
		for _, r := range runs[i] {
			merged[i].Merge(r.res)
		}
		rows = append(rows, Row{Name: fmt.Sprintf("probes %s, through the router, c=32 (%d loads)", mode.name, ebpfPairs),
			Value: fmt.Sprintf("%.0f req/s, p99 %s", merged[i].RPS(), ms(merged[i].Quantile(.99)))})
	}
	for i := 1; i < len(ebpfModes); i++ {
		var tput, p99 []float64
		for round := range ebpfPairs {
			off, on := runs[0][round].res, runs[i][round].res
			tput = append(tput, on.RPS()/off.RPS())
			p99 = append(p99, float64(on.Quantile(.99))/float64(off.Quantile(.99)))
		}
		t, p := median(tput), median(p99)
		rows = append(rows,
			Row{Name: fmt.Sprintf("throughput ratio, probes %s / off (median of %d rounds: %s)", ebpfModes[i].name, ebpfPairs, ratios(tput)),
				Value: fmt.Sprintf("%.3f", t), Goal: "≥ 0.98", Met: met(t >= 0.98)},
			Row{Name: fmt.Sprintf("p99 ratio, probes %s / off (median of %d rounds: %s)", ebpfModes[i].name, ebpfPairs, ratios(p99)),
				Value: fmt.Sprintf("%.3f", p), Goal: "≤ 1.02", Met: met(p <= 1.02)})
		// The kernel's own account of the programs' CPU time.
		var cpu, reqs float64
		progs := map[string]float64{}
		for _, r := range runs[i] {
			for prog, v := range r.bpfSeconds {
				cpu += v
				progs[prog] += v
			}
			reqs += float64(r.res.Succeeded)
		}
		if cpu > 0 {
			wall := float64(ebpfPairs) * e.Duration.Seconds()
			rows = append(rows, Row{Name: fmt.Sprintf("CPU in BPF programs, probes %s (kernel BPF statistics)", ebpfModes[i].name),
				Value: fmt.Sprintf("%.0f ns per request, %.2f%% of one CPU; %s", 1e9*cpu/reqs, 100*cpu/wall, topPrograms(progs, runs[i], wall))})
		}
	}
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

// programStats reads pilotlight_bpf_program_run_seconds_total and
// pilotlight_bpf_program_runs_total per program from a /metrics page.
func programStats(url string) (seconds, runs map[string]float64, err error) {
	seconds, runs = map[string]float64{}, map[string]float64{}
	resp, err := http.Get(url)
	if err != nil {
		return seconds, runs, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		var into map[string]float64
		switch {
		case strings.HasPrefix(line, "pilotlight_bpf_program_run_seconds_total{"):
			into = seconds
		case strings.HasPrefix(line, "pilotlight_bpf_program_runs_total{"):
			into = runs
		default:
			continue
		}
		_, rest, _ := strings.Cut(line, `program="`)
		prog, rest, _ := strings.Cut(rest, `"`)
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		into[prog] = v
	}
	return seconds, runs, sc.Err()
}

// topPrograms lists the programs that ran, costliest first, with ns per run and runs per second.
func topPrograms(progs map[string]float64, runs []ebpfRun, wallSeconds float64) string {
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
		var n float64
		for _, r := range runs {
			n += r.bpfRuns[p]
		}
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f ns × %.0f/s", p, 1e9*progs[p]/n, n/wallSeconds))
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
