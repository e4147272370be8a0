package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/loadgen"
)

// Row is one measured figure.
type Row struct {
	Name  string
	Value string
	Goal  string
	Met   *bool // nil: no goal
}

func met(b bool) *bool { return &b }

// Report prints rows as a Markdown table.
func Report(w io.Writer, title string, rows []Row) {
	fmt.Fprintf(w, "\n### %s\n\n| measure | value | goal | met |\n| --- | --- | --- | --- |\n", title)
	for _, r := range rows {
		m := ""
		if r.Met != nil {
			m = "no"
			if *r.Met {
				m = "yes"
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", r.Name, r.Value, r.Goal, m)
	}
}

// Env is what every scenario needs.
type Env struct {
	Bin      string // pilotlight binary
	Function string // function directory to benchmark (e.g. functions/fraud)
	Duration time.Duration
	Log      io.Writer // child processes' stderr
	// FlagsFile is the flag file the platform figure serves (make run's).
	FlagsFile string
	// ServeArgs are added to serve's arguments in the figures that pin
	// one instance (hop, grpc) and in ebpf's, e.g. --instance-http.
	ServeArgs []string
}

// instanceTransport names how serve reaches its instances under e.ServeArgs.
func (e Env) instanceTransport() string {
	if slices.Contains(e.ServeArgs, "--instance-http") {
		return "HTTP instance transport"
	}
	return "framed socket"
}

// manifest loads the function under test.
func (e Env) manifest() (*functions.Manifest, error) {
	return functions.LoadDir(e.Function)
}

// functionRoot writes a functions root holding only the function under
// test, with its scaling replaced, so a scenario controls the instance count.
func (e Env) functionRoot(sc functions.Scaling) (string, *functions.Manifest, error) {
	m, err := e.manifest()
	if err != nil {
		return "", nil, err
	}
	root, err := os.MkdirTemp("", "pilotlight-bench-")
	if err != nil {
		return "", nil, err
	}
	dir := filepath.Join(root, m.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, err
	}
	type rev struct {
		Name  string `yaml:"name"`
		Model string `yaml:"model"`
		Tag   string `yaml:"tag,omitempty"`
	}
	out := map[string]any{"name": m.Name, "handler": m.Handler, "flag": m.Flag,
		"runtime":  map[string]any{"sessions": m.Runtime.Sessions, "provider": m.Runtime.Provider, "intraOpThreads": m.Runtime.IntraOpThreads, "maxBodyBytes": m.Runtime.MaxBodyBytes},
		"batching": map[string]any{"maxBatch": m.Batching.MaxBatch, "maxDelay": m.Batching.MaxDelay.String()},
		"scaling": map[string]any{"minScale": sc.MinScale, "maxScale": sc.MaxScale, "targetConcurrency": sc.TargetConcurrency,
			"scaleToZeroAfter": sc.ScaleToZeroAfter.String()}}
	var revs []rev
	for _, r := range m.Revisions {
		abs, _ := filepath.Abs(m.ModelPath(r))
		revs = append(revs, rev{r.Name, abs, r.Tag})
	}
	out["revisions"] = revs
	b, err := yaml.Marshal(out)
	if err != nil {
		return "", nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, functions.ManifestFile), b, 0o644); err != nil {
		return "", nil, err
	}
	m2, err := functions.LoadDir(dir)
	return root, m2, err
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }

func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(q*float64(len(s))+0.999999) - 1
	if i < 0 {
		i = 0
	}
	return s[i]
}

// metricSum reads a histogram's _sum and _count from a /metrics page.
func metricSum(url, name string) (sum, count float64, err error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch {
		case strings.HasPrefix(line, name+"_sum"):
			sum += v
		case strings.HasPrefix(line, name+"_count"):
			count += v
		}
	}
	return sum, count, sc.Err()
}

// Instance measures one runtime instance: exec→ready over 10 starts, then
// V2 infer at concurrency 32 against /v2/health/ready in the same run.
func Instance(ctx context.Context, e Env) ([]Row, error) {
	m, err := e.manifest()
	if err != nil {
		return nil, err
	}
	rev := m.Revisions[0].Name
	var starts []time.Duration
	for i := 0; i < 10; i++ {
		p, err := StartRuntime(RuntimeBeside(e.Bin), e.Function, rev, e.Log)
		if err != nil {
			return nil, err
		}
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		err = WaitReady(rctx, "http://"+p.Addr+"/v2/health/ready")
		cancel()
		starts = append(starts, time.Since(p.Started))
		p.Stop()
		if err != nil {
			return nil, err
		}
	}
	p, err := StartRuntime(RuntimeBeside(e.Bin), e.Function, rev, e.Log)
	if err != nil {
		return nil, err
	}
	defer p.Stop()
	base := "http://" + p.Addr
	if err := WaitReady(ctx, base+"/v2/health/ready"); err != nil {
		return nil, err
	}
	body, err := V2Body(base, m.Name, 1)
	if err != nil {
		return nil, err
	}
	client := loadgen.NewClient(32)
	health := loadgen.RunWith(ctx, client, loadgen.Config{URL: base + "/v2/health/ready", Concurrency: 32, Duration: e.Duration})
	infer := loadgen.RunWith(ctx, client, loadgen.Config{URL: base + "/v2/models/" + m.Name + "/infer", Concurrency: 32, Duration: e.Duration,
		Body: func(int, int) []byte { return body }})
	sum, count, err := metricSum(base+"/metrics", "pilotlight_batch_size_rows")
	if err != nil {
		return nil, err
	}
	ratio := infer.RPS() / health.RPS()
	rows := []Row{
		{Name: "instance start, exec → ready (p50 of 10)", Value: ms(quantile(starts, .5)), Goal: "report"},
		{Name: "instance start, exec → ready (max of 10)", Value: ms(quantile(starts, 1))},
		{Name: "GET /v2/health/ready, c=32", Value: fmt.Sprintf("%.0f req/s, p99 %s", health.RPS(), ms(health.Quantile(.99)))},
		{Name: fmt.Sprintf("V2 infer %s (%s), c=32", m.Name, rev), Value: fmt.Sprintf("%.0f req/s, p50 %s, p99 %s", infer.RPS(), ms(infer.Quantile(.5)), ms(infer.Quantile(.99)))},
		{Name: "infer / health throughput", Value: fmt.Sprintf("%.2f", ratio), Goal: "≥ 0.50", Met: met(ratio >= 0.5)},
		{Name: "infer p99", Value: ms(infer.Quantile(.99)), Goal: "< 10 ms", Met: met(infer.Quantile(.99) < 10*time.Millisecond)},
		{Name: "mean batch size (rows per ONNX call)", Value: fmt.Sprintf("%.1f", sum/max(count, 1))},
		{Name: "failed or lost requests", Value: fmt.Sprintf("%d / %d", infer.Unanswered()+health.Unanswered(), infer.Sent+health.Sent), Goal: "0", Met: met(infer.Unanswered()+health.Unanswered() == 0)},
	}
	return rows, nil
}

// ColdStart measures the first request's latency after scale to zero, n
// times, as a client sees it (the request's wall time); extra are more
// serve flags (--runtime-bin to compare instance binaries).
func ColdStart(ctx context.Context, e Env, poolSize, n int, extra ...string) ([]Row, error) {
	// Dedicated: a shared revision's wake starts no process (bench density times those).
	ct, err := e.coldStartTarget(append([]string{"--pool-size", strconv.Itoa(poolSize), "--flags", "", "--isolation", functions.IsolationDedicated}, extra...))
	if err != nil {
		return nil, err
	}
	defer ct.close()
	m, base, body, url := ct.m, ct.base, ct.body, ct.url
	rev := m.DefaultRevision()
	var first, header []time.Duration
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	for i := 0; i < n; i++ {
		// Wait for zero instances and a full pool.
		deadline := time.Now().Add(30 * time.Second)
		for {
			a, err := GetAdmin(base)
			if err != nil {
				return nil, err
			}
			pids, _, _ := a.Instances(m.Name, rev)
			if len(pids) == 0 && len(a.WarmPool) >= poolSize {
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("revision %s did not scale to zero", rev)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t0 := time.Now()
		resp, err := client.Post(url, "application/json", strings.NewReader(string(body)))
		if err != nil {
			return nil, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		d := time.Since(t0)
		if resp.StatusCode != 200 {
			return nil, fmt.Errorf("cold request: %s", resp.Status)
		}
		cs, _ := strconv.ParseFloat(resp.Header.Get("X-Pilotlight-Cold-Start"), 64)
		if cs == 0 {
			return nil, fmt.Errorf("request %d after scale to zero did not wait for a start", i)
		}
		first = append(first, d)
		header = append(header, time.Duration(cs*float64(time.Second)))
	}
	source, goal := "warm pool", 5*time.Millisecond // issue 25: from outside, as Firecracker's snapshot resume (≤ 8 ms p90)
	if poolSize == 0 {
		source, goal = "exec", 70*time.Millisecond
	}
	if len(extra) > 0 {
		source += " (" + strings.Join(extra, " ") + ")"
	}
	p50 := quantile(first, .5)
	return []Row{
		{Name: fmt.Sprintf("scale from zero, %s: first request p50 (n=%d)", source, n), Value: ms(p50), Goal: "≤ " + ms(goal), Met: met(p50 <= goal)},
		{Name: fmt.Sprintf("scale from zero, %s: first request p99", source), Value: ms(quantile(first, .99))},
		{Name: fmt.Sprintf("scale from zero, %s: X-Pilotlight-Cold-Start p50", source), Value: ms(quantile(header, .5))},
	}, nil
}

// oneInstanceRoot is the function under test pinned to exactly one
// always-on instance, so router and direct calls reach the same process.
func (e Env) oneInstanceRoot() (string, *functions.Manifest, error) {
	m, err := e.manifest()
	if err != nil {
		return "", nil, err
	}
	return e.functionRoot(functions.Scaling{MinScale: 1, MaxScale: 1, TargetConcurrency: m.Scaling.TargetConcurrency, ScaleToZeroAfter: time.Hour})
}

// serveWithBody starts serve with args and builds a one-row V2 request for
// m from the model's own metadata (which also warms the revision).
func (e Env) serveWithBody(args []string, m *functions.Manifest) (*Proc, string, []byte, error) {
	s, err := StartServe(e.Bin, args, e.Log)
	if err != nil {
		return nil, "", nil, err
	}
	base := "http://" + s.Addr
	body, err := V2Body(base, m.Name, 1)
	if err != nil {
		s.Stop()
		return nil, "", nil, err
	}
	return s, base, body, nil
}

// microsRounds is the median of per-request CPU seconds over rounds, in µs,
// with each round's: "31.2 (30.1 / 31.2 / 35.0)"; "-" when nothing was read.
func microsRounds(v []float64) string {
	if len(v) == 0 || slices.Max(v) == 0 {
		return "-"
	}
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = fmt.Sprintf("%.1f", 1e6*x)
	}
	return fmt.Sprintf("%.1f (%s)", 1e6*median(v), strings.Join(parts, " / "))
}

// roundRates is each round's throughput, "a / b / c", and how many of the
// rounds' requests got no 2xx answer.
func roundRates(rs []*loadgen.Result) (string, int) {
	out := make([]string, 0, len(rs))
	failed := 0
	for _, r := range rs {
		out = append(out, fmt.Sprintf("%.0f", r.RPS()))
		failed += r.Unanswered()
	}
	return strings.Join(out, " / "), failed
}

// hopPath is one way to the instance in the hop figure.
type hopPath struct {
	name   string
	url    string
	rounds []*loadgen.Result
	paced  []*loadgen.Result // one paced load per round
	// cpu reads the proxy's CPU seconds so far (nil: direct, no proxy).
	cpu func() float64
	// proxyCPU and instanceCPU are each round's CPU seconds per answered
	// request, of the proxy and of the instance behind it.
	proxyCPU, instanceCPU []float64
}

// load runs one round of p, c=32 for d, and records its CPU per request.
func (p *hopPath) load(ctx context.Context, d time.Duration, body func(int, int) []byte, instancePID int) {
	proxy0, inst0 := p.proxySeconds(), treeCPU(instancePID)
	r := loadgen.Run(ctx, loadgen.Config{URL: p.url, Concurrency: 32, Duration: d, Body: body})
	proxy, inst := p.proxySeconds()-proxy0, treeCPU(instancePID)-inst0
	p.rounds = append(p.rounds, r)
	n := float64(max(r.Succeeded, 1))
	p.proxyCPU, p.instanceCPU = append(p.proxyCPU, proxy/n), append(p.instanceCPU, inst/n)
}

func (p *hopPath) proxySeconds() float64 {
	if p.cpu == nil {
		return 0
	}
	return p.cpu()
}

// hopRounds is how many times each path is loaded, alternating, so drift
// in the shared machine falls on every path alike.
const hopRounds = 3

// Hop compares the router with calling the same single instance directly,
// and with nginx and haproxy (when installed) in front of that instance,
// in one run: three rounds alternating direct, nginx, haproxy, router, at
// c=32 for e.Duration each; the ratios are medians over the rounds. Then
// the same paths paced at a quarter of the direct capacity, again in
// alternating rounds, for the latency each hop adds when the CPU is not
// saturated (the median over rounds of each round's difference from the
// direct load: one paced load per path swung by ±0.2 ms). The router runs with
// no flag file, as the peers do no flag work.
func Hop(ctx context.Context, e Env) ([]Row, error) {
	oi, err := e.oneInstance()
	if err != nil {
		return nil, err
	}
	defer oi.close()
	m, base, body, instance := oi.m, oi.base, oi.body, oi.addr
	a, err := GetAdmin(base)
	if err != nil {
		return nil, fmt.Errorf("find the instance's pid: %w", err)
	}
	pids, _, _ := a.Instances(m.Name, oi.revision)
	if len(pids) != 1 {
		return nil, fmt.Errorf("find the instance's pid: %s has %d instances, want 1", oi.revision, len(pids))
	}
	instancePID := pids[0]
	path := "/v2/models/" + m.Name + "/infer"
	paths := []*hopPath{{name: "direct to the instance", url: "http://" + instance + path}}
	var notes []Row
	for _, name := range []string{"nginx", "haproxy"} {
		p, err := startPeer(ctx, name, instance, e.Log)
		if err != nil {
			notes = append(notes, Row{Name: name, Value: "not measured: " + err.Error()})
			continue
		}
		defer p.stop()
		pid := p.cmd.Process.Pid
		paths = append(paths, &hopPath{name: fmt.Sprint(strings.Replace(p.name, name, name+" "+peerVersion(name), 1)), url: "http://" + p.addr + path,
			cpu: func() float64 { return treeCPU(pid) }}) // nginx's master and its worker
	}
	// serve's own threads: the router (and the engine, idle here), not its instance.
	router := &hopPath{name: strings.Join(append([]string{`pilotlight serve (--flags "")`}, e.ServeArgs...), " "), url: base + path,
		cpu: func() float64 { return threadsCPU(oi.serve.Pid()) }}
	paths = append(paths, router)
	bodyFn := func(int, int) []byte { return body }
	for _, p := range paths {
		// Warm each path's connections.
		loadgen.Run(ctx, loadgen.Config{URL: p.url, Concurrency: 32, Requests: 500, Body: bodyFn})
	}
	for round := 0; round < hopRounds; round++ {
		for _, p := range paths {
			p.load(ctx, e.Duration, bodyFn, instancePID)
		}
	}
	direct := paths[0]
	var directRPS float64
	for _, r := range direct.rounds {
		directRPS = max(directRPS, r.RPS())
	}
	// Paced: 32 clients at a quarter of the direct throughput, so latency
	// shows the hop, not CPU queueing.
	interval := time.Duration(float64(32*time.Second) / (directRPS / 4))
	for round := 0; round < hopRounds; round++ {
		for _, p := range paths {
			p.paced = append(p.paced, loadgen.Run(ctx, loadgen.Config{URL: p.url, Concurrency: 32, Duration: e.Duration, Body: bodyFn, Interval: interval}))
		}
	}
	// A path's paced p50 and what it adds to the direct one: medians over
	// the rounds, each round compared with the direct load beside it.
	pacedP50 := func(p *hopPath) time.Duration {
		var v []time.Duration
		for _, r := range p.paced {
			v = append(v, r.Quantile(.5))
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	addedP50 := func(p *hopPath) time.Duration {
		var v []time.Duration
		for i, r := range p.paced {
			v = append(v, r.Quantile(.5)-direct.paced[i].Quantile(.5))
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	ratio := func(p *hopPath) float64 {
		var rs []float64
		for i, r := range p.rounds {
			rs = append(rs, r.RPS()/direct.rounds[i].RPS())
		}
		return median(rs)
	}
	rows := []Row{}
	bestPeer, bestPeerAdd := 0.0, time.Duration(-1)
	nginxCPU := 0.0
	for _, p := range paths {
		rps, failed := roundRates(p.rounds)
		added := addedP50(p)
		v := fmt.Sprintf("%s req/s; ÷ direct %.2f; paced p50 %s (+%s); CPU per request: proxy %s, instance %s µs",
			rps, ratio(p), ms(pacedP50(p)), ms(added), microsRounds(p.proxyCPU), microsRounds(p.instanceCPU))
		if strings.HasPrefix(p.name, "nginx") {
			nginxCPU = median(p.proxyCPU)
		}
		if failed > 0 {
			v += fmt.Sprintf("; %d failed", failed)
		}
		rows = append(rows, Row{Name: p.name, Value: v})
		if p != direct && p != router {
			bestPeer = max(bestPeer, ratio(p))
			if bestPeerAdd < 0 || added < bestPeerAdd {
				bestPeerAdd = added
			}
		}
	}
	rows = append(rows, notes...)
	rows = append(rows, hopWithWrk(ctx, e, body, paths, instancePID)...)
	rr := ratio(router)
	rows = append(rows, Row{Name: "router ÷ direct throughput (median of rounds)", Value: fmt.Sprintf("%.2f", rr), Goal: "≥ 0.70", Met: met(rr >= 0.7)})
	if nginxCPU > 0 {
		rc := median(router.proxyCPU)
		rows = append(rows, Row{Name: fmt.Sprintf("proxy CPU per request, c=32 (schedstat; median of %d alternating rounds): router vs nginx", hopRounds),
			Value: fmt.Sprintf("%.1f vs %.1f µs", 1e6*rc, 1e6*nginxCPU), Goal: "≤ nginx's", Met: met(rc <= nginxCPU)})
	}
	routerAdd := addedP50(router)
	if bestPeer > 0 {
		rows = append(rows,
			Row{Name: "router ÷ direct vs the best peer's", Value: fmt.Sprintf("%.2f vs %.2f", rr, bestPeer), Goal: "≥ the peer's", Met: met(rr >= bestPeer)},
			Row{Name: fmt.Sprintf("added p50 at a quarter of capacity (%.0f req/s; median of %d alternating rounds): router vs the best peer", direct.paced[0].RPS(), hopRounds), Value: ms(routerAdd) + " vs " + ms(bestPeerAdd), Goal: "≤ the peer's", Met: met(routerAdd <= bestPeerAdd)})
	}
	return rows, nil
}

// hopWithWrk loads the same paths (the first is direct, the last the
// router) with wrk, alternating over hopRounds rounds, and gives each
// path's rates and median ratio to direct, and the router's against the
// best peer's: the hop with a load generator that leaves more of the
// machine to the path under test.
func hopWithWrk(ctx context.Context, e Env, body []byte, paths []*hopPath, instancePID int) []Row {
	dir, err := os.MkdirTemp("", "pilotlight-bench-wrk-")
	if err != nil {
		return []Row{{Name: "wrk", Value: "not measured: " + err.Error()}}
	}
	defer os.RemoveAll(dir)
	w, err := newWrk(dir, body)
	if err != nil {
		return []Row{{Name: "wrk", Value: "not measured: " + err.Error()}}
	}
	type res struct {
		*hopPath
		rps        []float64
		fails      int
		proxy, ins []float64 // CPU seconds per request, per round
	}
	var rs []*res
	for _, p := range paths {
		rs = append(rs, &res{hopPath: p})
	}
	d := max(e.Duration, time.Second)
	for round := 0; round < hopRounds; round++ {
		for _, r := range rs {
			proxy0, inst0 := r.proxySeconds(), treeCPU(instancePID)
			rps, _, failed, err := w.run(ctx, r.url, d)
			if err != nil {
				return []Row{{Name: "wrk", Value: "not measured: " + err.Error()}}
			}
			n := max(rps*float64(int(d.Seconds())), 1) // wrk runs whole seconds
			r.proxy, r.ins = append(r.proxy, (r.proxySeconds()-proxy0)/n), append(r.ins, (treeCPU(instancePID)-inst0)/n)
			r.rps, r.fails = append(r.rps, rps), r.fails+failed
		}
	}
	ratio := func(r *res) float64 {
		var xs []float64
		for i := range r.rps {
			xs = append(xs, r.rps[i]/rs[0].rps[i])
		}
		sort.Float64s(xs)
		return xs[len(xs)/2]
	}
	var rows []Row
	best := 0.0
	for i, r := range rs {
		var vs []string
		for _, x := range r.rps {
			vs = append(vs, fmt.Sprintf("%.0f", x))
		}
		v := fmt.Sprintf("%s req/s; ÷ direct %.2f; CPU per request: proxy %s, instance %s µs", strings.Join(vs, " / "), ratio(r), microsRounds(r.proxy), microsRounds(r.ins))
		if r.fails > 0 {
			v += fmt.Sprintf("; %d failed", r.fails)
		}
		rows = append(rows, Row{Name: "wrk (1 thread, 32 connections): " + r.name, Value: v})
		if i > 0 && i < len(rs)-1 {
			best = max(best, ratio(r))
		}
	}
	if rr := ratio(rs[len(rs)-1]); best > 0 {
		rows = append(rows, Row{Name: "wrk: router ÷ direct vs the best peer's", Value: fmt.Sprintf("%.2f vs %.2f", rr, best), Goal: "≥ the peer's and ≥ 0.70", Met: met(rr >= best && rr >= 0.7)})
	}
	return rows
}

// Step measures how fast a second instance serves after load steps from 1 to 64 clients.
func Step(ctx context.Context, e Env) ([]Row, error) {
	root, m, err := e.functionRoot(functions.Scaling{MinScale: 0, MaxScale: 4, TargetConcurrency: 16, ScaleToZeroAfter: time.Hour})
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(root)
	s, base, body, err := e.serveWithBody([]string{"--functions", root, "--pool-size", "1"}, m)
	if err != nil {
		return nil, err
	}
	defer s.Stop()
	url := base + "/v2/models/" + m.Name + "/infer"
	bodyFn := func(int, int) []byte { return body }
	loadgen.Run(ctx, loadgen.Config{URL: url, Concurrency: 1, Duration: 2 * time.Second, Body: bodyFn})
	stepped := time.Now()
	res := make(chan *loadgen.Result, 1)
	go func() {
		res <- loadgen.Run(ctx, loadgen.Config{URL: url, Concurrency: 64, Duration: 3 * time.Second, Body: bodyFn})
	}()
	// What the autoscaler is fed: requests in flight at the instances plus
	// those queued for one, summed over the function's revisions. On this
	// machine the load generator shares the two cores, so 64 clients are
	// far fewer requests inside the platform, and how soon that sum stays
	// above the target decides the figure.
	var (
		second  time.Duration
		seen    float64
		samples int
	)
	for second == 0 && time.Since(stepped) < 3*time.Second {
		a, err := GetAdmin(base)
		if err == nil {
			conc := 0
			for _, f := range a.Functions {
				for _, r := range f.Revisions {
					ready := 0
					conc += r.Queued
					for _, in := range r.Instances {
						conc += in.Inflight
						if in.State == "ready" {
							ready++
						}
					}
					if ready >= 2 {
						second = time.Since(stepped)
					}
				}
			}
			if second == 0 && time.Since(stepped) > 100*time.Millisecond { // the clients connected
				seen += float64(conc)
				samples++
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	r := <-res
	rows := []Row{{Name: "load step 1 → 64 clients: 64-client phase", Value: r.String()}}
	if second == 0 {
		rows = append(rows, Row{Name: "load step 1 → 64: second instance ready", Value: "not within 3 s", Goal: "≤ 1 s", Met: met(false)})
	} else {
		rows = append(rows, Row{Name: "load step 1 → 64: second instance ready", Value: ms(second), Goal: "≤ 1 s", Met: met(second <= time.Second)})
	}
	if samples > 0 {
		rows = append(rows, Row{Name: "load step 1 → 64: requests inside the platform until then (the autoscaler's input), mean",
			Value: fmt.Sprintf("%.1f of 64 clients (target %d per instance)", seen/float64(samples), m.Scaling.TargetConcurrency)})
	}
	return rows, nil
}

// Memory reports resident memory of a generic pool process, of a
// specialised instance, and of serve with every function at zero.
func Memory(ctx context.Context, e Env, fnRoot string) ([]Row, error) {
	s, err := StartServe(e.Bin, []string{"--functions", fnRoot, "--pool-size", "1"}, e.Log)
	if err != nil {
		return nil, err
	}
	defer s.Stop()
	base := "http://" + s.Addr
	var a *Admin
	deadline := time.Now().Add(30 * time.Second)
	for {
		if a, err = GetAdmin(base); err != nil {
			return nil, err
		}
		if len(a.WarmPool) > 0 {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("warm pool never filled")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // let the pool process settle
	serveRSS, poolRSS := RSS(s.Pid()), RSS(a.WarmPool[0].PID)
	m, err := e.manifest()
	if err != nil {
		return nil, err
	}
	body, err := V2Body(base, m.Name, 1)
	if err != nil {
		return nil, err
	}
	loadgen.Run(ctx, loadgen.Config{URL: base + "/v2/models/" + m.Name + "/infer", Concurrency: 4, Requests: 200, Body: func(int, int) []byte { return body }})
	a, err = GetAdmin(base)
	if err != nil {
		return nil, err
	}
	var instRSS int64
	for _, f := range a.Functions {
		for _, r := range f.Revisions {
			for _, in := range r.Instances {
				instRSS = max(instRSS, RSS(in.PID))
			}
		}
	}
	mib := func(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
	return []Row{
		{Name: "serve RSS, every function at zero (router + engine)", Value: mib(serveRSS)},
		{Name: "generic warm-pool process RSS (ONNX Runtime initialised, no model)", Value: mib(poolRSS)},
		{Name: fmt.Sprintf("specialised %s instance RSS after 200 requests", m.Name), Value: mib(instRSS)},
	}, nil
}

// coldStartTarget is serve over a copy of the function that scales to zero
// 50 ms after its last request, with the stable revision's V2 infer URL and
// a one-row body for it: what every cold-start measurement starts from.
type coldStartTarget struct {
	serve           *Proc
	m               *functions.Manifest
	base, url, root string
	body            []byte
}

func (e Env) coldStartTarget(serveArgs []string) (*coldStartTarget, error) {
	m0, err := e.manifest()
	if err != nil {
		return nil, err
	}
	root, m, err := e.functionRoot(functions.Scaling{MinScale: 0, MaxScale: 1, TargetConcurrency: m0.Scaling.TargetConcurrency, ScaleToZeroAfter: 50 * time.Millisecond})
	if err != nil {
		return nil, err
	}
	s, err := StartServe(e.Bin, append([]string{"--functions", root}, serveArgs...), e.Log)
	if err != nil {
		os.RemoveAll(root)
		return nil, err
	}
	ct := &coldStartTarget{serve: s, m: m, root: root, base: "http://" + s.Addr}
	if ct.body, err = V2Body(ct.base, m.Name, 1); err != nil {
		ct.close()
		return nil, err
	}
	ct.url = ct.base + "/v2/models/" + m.Name + "/versions/" + m.DefaultRevision() + "/infer"
	return ct, nil
}

func (ct *coldStartTarget) close() {
	ct.serve.Stop()
	os.RemoveAll(ct.root)
}

// oneInstance is serve pinned to one always-on instance of the function
// (no flags, no warm pool), that instance's address and revision, and a
// V2 body: what the scenarios comparing the router with calling the
// instance directly start from.
type oneInstance struct {
	serve          *Proc
	m              *functions.Manifest
	base, root     string
	addr, revision string
	body           []byte
}

func (e Env) oneInstance() (*oneInstance, error) {
	root, m, err := e.oneInstanceRoot()
	if err != nil {
		return nil, err
	}
	// No flags: every call goes to the stable revision, the one instance
	// measured both ways, in a process of its own (--serve-arg can say
	// otherwise: a later --isolation wins).
	s, base, body, err := e.serveWithBody(append([]string{"--functions", root, "--pool-size", "0", "--flags", "", "--isolation", functions.IsolationDedicated}, e.ServeArgs...), m)
	if err != nil {
		os.RemoveAll(root)
		return nil, err
	}
	oi := &oneInstance{serve: s, m: m, base: base, root: root, body: body}
	a, err := GetAdmin(base)
	if err == nil {
		oi.addr, oi.revision, err = readyInstance(a, m)
	}
	if err != nil {
		oi.close()
		return nil, err
	}
	return oi, nil
}

func (oi *oneInstance) close() {
	oi.serve.Stop()
	os.RemoveAll(oi.root)
}

// readyInstance is the address and revision of a ready instance of m, for
// the scenarios that compare the router with calling that instance directly.
func readyInstance(a *Admin, m *functions.Manifest) (addr, revision string, err error) {
	for _, r := range m.Revisions {
		if _, ports, ready := a.Instances(m.Name, r.Name); ready > 0 && len(ports) > 0 {
			return fmt.Sprintf("127.0.0.1:%d", ports[0]), r.Name, nil
		}
	}
	return "", "", fmt.Errorf("no ready instance of %s to compare with", m.Name)
}
