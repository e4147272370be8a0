package bench

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"

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
	s, base, body, err := e.serveWithBody([]string{"--functions", root, "--pool-size", "0", "--flags", e.FlagsFile, "--dev"}, m)
	if err != nil {
		return nil, err
	}
	defer s.Stop()
	infer := base + "/v2/models/" + m.Name + "/infer"
	bodyFn := func(int, int) []byte { return body }
	loadgen.Run(ctx, loadgen.Config{URL: infer, Concurrency: 32, Requests: 2000, Body: bodyFn}) // warm both revisions
	var ready, inf []*loadgen.Result
	var ratios []float64
	for round := 0; round < hopRounds; round++ {
		r := loadgen.Run(ctx, loadgen.Config{URL: base + "/v2/health/ready", Concurrency: 32, Duration: e.Duration})
		i := loadgen.Run(ctx, loadgen.Config{URL: infer, Concurrency: 32, Duration: e.Duration, Body: bodyFn})
		ready, inf = append(ready, r), append(inf, i)
		ratios = append(ratios, i.RPS()/r.RPS())
	}
	rates := func(rs []*loadgen.Result) string {
		var out []string
		failed := 0
		for _, r := range rs {
			out = append(out, fmt.Sprintf("%.0f", r.RPS()))
			failed += r.Lost
			for _, n := range r.Failed() {
				failed += n
			}
		}
		v := strings.Join(out, " / ") + " req/s"
		if failed > 0 {
			v += fmt.Sprintf("; %d failed", failed)
		}
		return v
	}
	sort.Float64s(ratios)
	ratio := ratios[len(ratios)/2]
	return []Row{
		{Name: "router GET /v2/health/ready, c=32", Value: rates(ready)},
		{Name: fmt.Sprintf("V2 infer %s through the router, flags from %s, c=32", m.Name, e.FlagsFile), Value: rates(inf)},
		{Name: "infer ÷ health through the platform (median of rounds)", Value: fmt.Sprintf("%.2f", ratio), Goal: "≥ 0.50", Met: met(ratio >= 0.5)},
	}, nil
}
