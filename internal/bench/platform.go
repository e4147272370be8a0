package bench

import (
	"context"
	"fmt"
	"os"

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
