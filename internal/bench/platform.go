package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/loadgen"
)

// Platform measures inference through the whole platform as `make run`
// serves it — the shipped flag file picking each request's revision (a
// targeted rule, then a 90/10 split), auth off — against the cheapest
// thing the router answers, its own GET /v2/health/ready, alternating
// three rounds at c=32 in one run. Each revision is pinned to one
// instance so no cold start falls inside a round.
func Platform(ctx context.Context, e Env) ([]Row, error) {
	if _, err := os.Stat(e.FlagsFile); err != nil {
		return nil, fmt.Errorf("the flag file to serve: %w (run from the repository root, or pass --flags-file)", err)
	}
	root, m, err := e.oneInstanceRoot()
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(root)
	// Dedicated: a shared process holding both revisions answers a call that
	// names neither (the "directly" rows) with 400.
	s, base, body, err := e.serveWithBody([]string{"--functions", root, "--pool-size", "0", "--flags", e.FlagsFile, "--dev", "--isolation", functions.IsolationDedicated}, m)
	if err != nil {
		return nil, err
	}
	defer s.Stop()
	infer := base + "/v2/models/" + m.Name + "/infer"
	bodyFn := func(int, int) []byte { return body }
	loadgen.Run(ctx, loadgen.Config{URL: infer, Concurrency: 32, Requests: 2000, Body: bodyFn}) // warm both revisions
	// The same two calls on the default revision's instance directly: the
	// ratio no router can beat, since infer there costs what it costs.
	rev := m.DefaultRevision()
	_, port, err := OneInstance(ctx, base, m.Name, rev)
	if err != nil {
		return nil, err
	}
	direct := fmt.Sprintf("http://127.0.0.1:%d", port)
	var ready, inf, dReady, dInf []*loadgen.Result
	var ratios, dRatios, hops []float64
	for round := 0; round < hopRounds; round++ {
		r := loadgen.Run(ctx, loadgen.Config{URL: base + "/v2/health/ready", Concurrency: 32, Duration: e.Duration})
		i := loadgen.Run(ctx, loadgen.Config{URL: infer, Concurrency: 32, Duration: e.Duration, Body: bodyFn})
		dr := loadgen.Run(ctx, loadgen.Config{URL: direct + "/v2/health/ready", Concurrency: 32, Duration: e.Duration})
		di := loadgen.Run(ctx, loadgen.Config{URL: direct + "/v2/models/" + m.Name + "/infer", Concurrency: 32, Duration: e.Duration, Body: bodyFn})
		ready, inf, dReady, dInf = append(ready, r), append(inf, i), append(dReady, dr), append(dInf, di)
		ratios = append(ratios, i.RPS()/r.RPS())
		dRatios = append(dRatios, di.RPS()/dr.RPS())
		hops = append(hops, i.RPS()/di.RPS())
	}
	rates := func(rs []*loadgen.Result) string {
		v, failed := roundRates(rs)
		v += " req/s"
		if failed > 0 {
			v += fmt.Sprintf("; %d failed", failed)
		}
		return v
	}
	ratio, dRatio, hop := median(ratios), median(dRatios), median(hops)
	return []Row{
		{Name: "router GET /v2/health/ready, c=32", Value: rates(ready)},
		{Name: fmt.Sprintf("V2 infer %s through the router, flags from %s, c=32", m.Name, e.FlagsFile), Value: rates(inf)},
		{Name: fmt.Sprintf("instance of %s directly: GET /v2/health/ready, c=32", rev), Value: rates(dReady)},
		{Name: fmt.Sprintf("instance of %s directly: V2 infer, c=32", rev), Value: rates(dInf)},
		{Name: "infer ÷ health through the platform (median of rounds)", Value: fmt.Sprintf("%.2f", ratio), Goal: "≥ 0.50", Met: met(ratio >= 0.5)},
		{Name: "infer ÷ health on the instance directly, no router (median of rounds): the ceiling of the figure above", Value: fmt.Sprintf("%.2f", dRatio)},
		{Name: "infer through the platform (flags on) ÷ infer on the instance directly (median of rounds)", Value: fmt.Sprintf("%.2f", hop)},
	}, nil
}

// The users of PlatformUsers. rand.Zipf needs an exponent above 1; 1.1
// is near the s ≈ 1 measured for web traffic.
const (
	zipfUsers    = 10_000
	zipfExponent = 1.1
	// flagCostGoal is issue 25's goal for infer with the shipped flags ÷
	// infer with no flag file.
	flagCostGoal = 0.95
)

// PlatformUsers measures what the flag file costs with realistic users:
// the function served twice, once with e.FlagsFile and once with no flag
// file (every request to the stable revision), loaded in alternating rounds
// at c=32 in one run. Each request carries its user in X-User-ID: in one
// mode 10,000 users drawn from a Zipf distribution, in the other a new
// user every request. After each mode it reads the flag cache's size and
// hits from the flagged serve's /metrics.
func PlatformUsers(ctx context.Context, e Env) ([]Row, error) {
	if _, err := os.Stat(e.FlagsFile); err != nil {
		return nil, fmt.Errorf("the flag file to serve: %w (run from the repository root, or pass --flags-file)", err)
	}
	type serve struct {
		name, infer, metrics string
		pid                  int
		rounds               []*loadgen.Result
		cpu                  []pathCPU // per round, per answered request
	}
	// The shipped rules with every variant of the function's flag on its
	// default revision: the flags' own cost, without the canary's (10% of
	// requests on a second revision, here a larger model, with batches of
	// its own).
	oneRevision, stable, err := flagsOnOneRevision(e)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(filepath.Dir(oneRevision))
	var serves []*serve
	var body []byte
	for _, flagsArg := range []string{e.FlagsFile, "", oneRevision} {
		root, m, err := e.oneInstanceRoot()
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(root)
		s, base, b, err := e.serveWithBody([]string{"--functions", root, "--pool-size", "0", "--flags", flagsArg, "--dev"}, m)
		if err != nil {
			return nil, err
		}
		defer s.Stop()
		body = b
		name := "flags from " + flagsArg
		switch flagsArg {
		case "":
			name = "no flag file"
		case oneRevision:
			name = "the same rules, every variant on " + stable
		}
		sv := &serve{name: name, infer: base + "/v2/models/" + m.Name + "/infer", metrics: base + "/metrics", pid: s.Pid()}
		loadgen.Run(ctx, loadgen.Config{URL: sv.infer, Concurrency: 32, Requests: 2000, Body: func(int, int) []byte { return body }}) // warm every revision
		serves = append(serves, sv)
	}
	flagged, plain, rulesOnly := serves[0], serves[1], serves[2]
	bodyFn := func(int, int) []byte { return body }

	zipfs := make([]*rand.Zipf, 32)
	for w := range zipfs {
		zipfs[w] = rand.NewZipf(rand.New(rand.NewPCG(25, uint64(w))), zipfExponent, 1, zipfUsers-1)
	}
	var fresh atomic.Int64
	modes := []struct {
		name    string
		headers func(w, i int, h http.Header)
	}{
		{fmt.Sprintf("%d users, Zipf s=%.1f", zipfUsers, zipfExponent), func(w, _ int, h http.Header) {
			h.Set("X-User-ID", "user-"+strconv.FormatUint(zipfs[w].Uint64(), 10))
		}},
		{"a new user every request", func(_, _ int, h http.Header) {
			h.Set("X-User-ID", "new-"+strconv.FormatInt(fresh.Add(1), 10))
		}},
	}
	var rows []Row
	for _, mode := range modes {
		hits0, _ := metricValue(flagged.metrics, "pilotlight_flags_cache_hits_total")
		misses0, _ := metricValue(flagged.metrics, "pilotlight_flags_cache_misses_total")
		var ratios, ruleRatios []float64
		for _, s := range serves {
			s.rounds, s.cpu = nil, nil
		}
		for round := 0; round < hopRounds; round++ {
			order := serves
			if round%2 == 1 { // alternate who goes first, so drift falls on each
				order = []*serve{rulesOnly, plain, flagged}
			}
			for _, s := range order {
				before := readPathCPU(s.pid)
				r := loadgen.Run(ctx, loadgen.Config{URL: s.infer, Concurrency: 32, Duration: e.Duration, Body: bodyFn, Headers: mode.headers})
				used, n := readPathCPU(s.pid).sub(before), float64(max(r.Sent-r.Unanswered(), 1))
				s.rounds, s.cpu = append(s.rounds, r), append(s.cpu, pathCPU{serve: used.serve / n, instances: used.instances / n})
			}
			ratios = append(ratios, flagged.rounds[round].RPS()/plain.rounds[round].RPS())
			ruleRatios = append(ruleRatios, rulesOnly.rounds[round].RPS()/plain.rounds[round].RPS())
		}
		for _, s := range serves {
			v, failed := roundRates(s.rounds)
			v += " req/s"
			if failed > 0 {
				v += fmt.Sprintf("; %d failed", failed)
			}
			rows = append(rows, Row{Name: fmt.Sprintf("%s: V2 infer through the platform, %s, c=32", mode.name, s.name), Value: v})
		}
		ratio := median(ratios)
		perReq := func(s *serve, f func(pathCPU) float64) float64 {
			v := make([]float64, len(s.cpu))
			for i, c := range s.cpu {
				v[i] = f(c) * 1e6
			}
			return median(v)
		}
		serveOnly := func(c pathCPU) float64 { return c.serve }
		path := func(c pathCPU) float64 { return c.serve + c.instances }
		rows = append(rows,
			Row{Name: fmt.Sprintf("%s: serve's CPU per request, flags vs no flag file vs the same rules on one revision (median of rounds; steadier than req/s on a shared machine)", mode.name),
				Value: fmt.Sprintf("%.1f µs vs %.1f µs vs %.1f µs", perReq(flagged, serveOnly), perReq(plain, serveOnly), perReq(rulesOnly, serveOnly))},
			Row{Name: fmt.Sprintf("%s: CPU per request on the path (serve + instances), no flag file ÷ flags: the throughput ratio a CPU-bound machine would show", mode.name),
				Value: fmt.Sprintf("%.3f", perReq(plain, path)/perReq(flagged, path))})
		ruleRatio := median(ruleRatios)
		rows = append(rows,
			Row{Name: fmt.Sprintf("%s: infer with the flags ÷ with no flag file (median of %d alternating rounds)", mode.name, hopRounds),
				Value: fmt.Sprintf("%.3f", ratio), Goal: fmt.Sprintf("≥ %.2f", flagCostGoal), Met: met(ratio >= flagCostGoal)},
			Row{Name: fmt.Sprintf("%s: the flags' own cost: the same rules with every variant on %s ÷ no flag file (the rest of the row above is the canary's: 10%% on a second, larger model)", mode.name, stable),
				Value: fmt.Sprintf("%.3f", ruleRatio), Goal: fmt.Sprintf("≥ %.2f", flagCostGoal), Met: met(ruleRatio >= flagCostGoal)})
		entries, err1 := metricValue(flagged.metrics, "pilotlight_flags_cache_entries")
		size, err2 := metricValue(flagged.metrics, "pilotlight_flags_cache_bytes")
		hits, _ := metricValue(flagged.metrics, "pilotlight_flags_cache_hits_total")
		misses, _ := metricValue(flagged.metrics, "pilotlight_flags_cache_misses_total")
		v := fmt.Sprintf("%.0f entries, %.1f MiB; %.0f hits, %.0f misses in this mode", entries, size/(1<<20), hits-hits0, misses-misses0)
		if err := errors.Join(err1, err2); err != nil {
			v = "unreadable: " + err.Error()
		}
		rows = append(rows, Row{Name: fmt.Sprintf("%s: the router's flag cache afterwards (bounded: 65,536 entries, 16 MiB)", mode.name), Value: v})
	}
	return rows, nil
}

// flagsOnOneRevision writes e.FlagsFile with every variant of the
// function's flag set to its default revision (which it returns), into a
// directory of its own.
func flagsOnOneRevision(e Env) (path, revision string, err error) {
	m, err := e.manifest()
	if err != nil {
		return "", "", err
	}
	raw, err := os.ReadFile(e.FlagsFile)
	if err != nil {
		return "", "", err
	}
	var file map[string]any
	if err := json.Unmarshal(raw, &file); err != nil {
		return "", "", fmt.Errorf("%s: %w", e.FlagsFile, err)
	}
	fl, _ := file["flags"].(map[string]any)
	flag, _ := fl[m.Flag].(map[string]any)
	variants, _ := flag["variants"].(map[string]any)
	if len(variants) == 0 {
		return "", "", fmt.Errorf("%s: flag %s has no variants to point at %s", e.FlagsFile, m.Flag, m.DefaultRevision())
	}
	for v := range variants {
		variants[v] = m.DefaultRevision()
	}
	out, err := json.MarshalIndent(file, "", "  ")
	if err != nil {
		return "", "", err
	}
	dir, err := os.MkdirTemp("", "bench-flags-")
	if err != nil {
		return "", "", err
	}
	path = filepath.Join(dir, "flags.json")
	return path, m.DefaultRevision(), os.WriteFile(path, out, 0o644)
}

// metricValue sums a counter's or gauge's series on a /metrics page.
func metricValue(url, name string) (float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var sum float64
	found := false
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 || (f[0] != name && !strings.HasPrefix(f[0], name+"{")) {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", name, err)
		}
		sum, found = sum+v, true
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	if !found {
		return 0, fmt.Errorf("%s not on %s", name, url)
	}
	return sum, nil
}
