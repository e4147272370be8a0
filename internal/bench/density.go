package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/loadgen"
)

// Density measures many functions per machine (issue 26): copies of fraud
// and recommend under distinct names, served shared (many revisions'
// sessions in one runtime process) and dedicated (a process each), side by
// side in one run.
type Density struct {
	// Functions is how many copies the shared figures serve (200); Dedicated
	// is how many the dedicated side runs (its total is scaled to Functions,
	// as labelled: 200 dedicated processes would take ~14 GiB here).
	Functions, Dedicated int
	// Wakes is how many first responses after an unload are timed (50).
	Wakes int
	// Registered is how many functions serve registers, all at zero, for
	// its own RSS and start time (1,000).
	Registered int
}

// densityBodies are each handler's function JSON for one call.
var densityBodies = map[string]string{
	"fraud":     `{"amount": 912.40, "avg_amount_30d": 85.0, "merchant_category": "electronics", "country": "RO", "home_country": "DE", "hour": 3, "device_new": true, "tx_last_24h": 9}`,
	"recommend": `{"user_id": 42, "k": 3}`,
}

// copies writes n functions into a new root: fraud and recommend in turn,
// named fraud-c0000, recommend-c0001, ..., each one revision pointing at
// the shipped model, scaling to zero after idle. It returns the root and
// the names with their handlers.
func copies(fnRoot string, n int, idle time.Duration) (string, [][2]string, error) {
	root, err := os.MkdirTemp("", "pilotlight-density-")
	if err != nil {
		return "", nil, err
	}
	var out [][2]string
	for i := 0; i < n; i++ {
		handler := []string{"fraud", "recommend"}[i%2]
		src, err := functions.LoadDir(filepath.Join(fnRoot, handler))
		if err != nil {
			return root, nil, err
		}
		model, _ := filepath.Abs(src.ModelPath(src.Revisions[0]))
		name := fmt.Sprintf("%s-c%04d", handler, i)
		dir := filepath.Join(root, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return root, nil, err
		}
		raw := fmt.Sprintf("name: %s\nhandler: %s\nrevisions:\n  - name: %s-00001\n    model: %s\nruntime:\n  sessions: %d\n  intraOpThreads: %d\nscaling:\n  maxScale: 1\n  scaleToZeroAfter: %s\n",
			name, handler, name, model, src.Runtime.Sessions, src.Runtime.IntraOpThreads, idle)
		if err := os.WriteFile(filepath.Join(dir, functions.ManifestFile), []byte(raw), 0o644); err != nil {
			return root, nil, err
		}
		out = append(out, [2]string{name, handler})
	}
	return root, out, nil
}

var densityClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 60 * time.Second}

func call(base string, fn [2]string) (time.Duration, http.Header, error) {
	t0 := time.Now()
	resp, err := densityClient.Post(base+"/functions/"+fn[0], "application/json", strings.NewReader(densityBodies[fn[1]]))
	if err != nil {
		return 0, nil, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return 0, nil, fmt.Errorf("%s: %s", fn[0], resp.Status)
	}
	return time.Since(t0), resp.Header, nil
}

// childrenRSS sums the RSS of serve's runtime processes but the warm
// pool's idle ones (the same pilot light on both sides).
func childrenRSS(base string, serve int) (int64, int, error) {
	a, err := GetAdmin(base)
	if err != nil {
		return 0, 0, err
	}
	idle := map[int]bool{}
	for _, p := range a.WarmPool {
		idle[p.PID] = true
	}
	var sum int64
	n := 0
	for _, pid := range Children(serve) {
		if !idle[pid] {
			sum += RSS(pid)
			n++
		}
	}
	return sum, n, nil
}

func mibs(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

// trickleRSS serves n copies with isolation, calls each in turn twice (a
// trickle: one request at a time), and returns the runtime processes' RSS.
func (d Density) trickleRSS(e Env, fnRoot, isolation string, n int) (int64, int, error) {
	root, fns, err := copies(fnRoot, n, 10*time.Minute)
	defer os.RemoveAll(root)
	if err != nil {
		return 0, 0, err
	}
	s, err := StartServe(e.Bin, []string{"--functions", root, "--flags", "", "--pool-size", "1", "--isolation", isolation}, e.Log)
	if err != nil {
		return 0, 0, err
	}
	defer s.Stop()
	base := "http://" + s.Addr
	for round := 0; round < 2; round++ {
		for i, fn := range fns {
			if _, _, err := call(base, fn); err != nil {
				return 0, 0, fmt.Errorf("%s, call %d of round %d: %w", isolation, i, round, err)
			}
		}
	}
	time.Sleep(time.Second) // the pool's refill settles
	return childrenRSS(base, s.Pid())
}

// Run measures every figure.
func (d Density) Run(ctx context.Context, e Env, fnRoot string) ([]Row, error) {
	var rows []Row
	fmt.Fprintf(os.Stderr, "bench density: %d functions shared...\n", d.Functions)
	shared, sharedProcs, err := d.trickleRSS(e, fnRoot, functions.IsolationShared, d.Functions)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "bench density: %d functions dedicated...\n", d.Dedicated)
	ded, dedProcs, err := d.trickleRSS(e, fnRoot, functions.IsolationDedicated, d.Dedicated)
	if err != nil {
		return nil, err
	}
	dedScaled := ded * int64(d.Functions) / int64(d.Dedicated)
	ratio := float64(shared) / float64(dedScaled)
	rows = append(rows,
		Row{Name: fmt.Sprintf("%d functions at a trickle, shared: runtime processes' RSS (%d processes; the idle warm pool not counted)", d.Functions, sharedProcs), Value: mibs(shared)},
		Row{Name: fmt.Sprintf("%d functions at a trickle, dedicated: runtime processes' RSS (%d processes; the idle warm pool not counted)", d.Dedicated, dedProcs), Value: mibs(ded)},
		Row{Name: fmt.Sprintf("shared ÷ dedicated for %d functions (dedicated scaled ×%.0f from %d)", d.Functions, float64(d.Functions)/float64(d.Dedicated), d.Dedicated),
			Value: fmt.Sprintf("%.3f (%s vs %s)", ratio, mibs(shared), mibs(dedScaled)), Goal: "≤ 0.1", Met: met(ratio <= 0.1)},
	)

	fmt.Fprintf(os.Stderr, "bench density: %d wakes...\n", d.Wakes)
	wakes, err := d.wakes(e)
	if err != nil {
		return nil, err
	}
	p50 := quantile(wakes, .5)
	rows = append(rows,
		Row{Name: fmt.Sprintf("first response after an unload, shared process running: p50 (n=%d)", len(wakes)), Value: ms(p50), Goal: "≤ 5.00 ms", Met: met(p50 <= 5*time.Millisecond)},
		Row{Name: "first response after an unload, shared process running: p99", Value: ms(quantile(wakes, .99))},
	)
	for _, pool := range []int{1, 0} {
		r, err := ColdStart(ctx, e, pool, d.Wakes)
		if err != nil {
			return nil, err
		}
		rows = append(rows, r[:2]...)
	}

	for _, isolation := range []string{functions.IsolationDedicated, functions.IsolationShared} {
		fmt.Fprintf(os.Stderr, "bench density: a burst of %d wakes, %s...\n", burstFunctions, isolation)
		lat, err := d.burst(e, fnRoot, isolation)
		if err != nil {
			return nil, err
		}
		rows = append(rows, Row{Name: fmt.Sprintf("burst: %d functions at zero woken at once, warm pool of %d, %s: first responses p50 / p99 (n=%d)", burstFunctions, burstPool, isolation, len(lat)),
			Value: ms(quantile(lat, .5)) + " / " + ms(quantile(lat, .99))})
	}

	fmt.Fprintf(os.Stderr, "bench density: a hot function beside 50 idle and 5 trickling...\n")
	hot, err := d.hot(ctx, e, fnRoot)
	if err != nil {
		return nil, err
	}
	rows = append(rows, hot...)

	fmt.Fprintf(os.Stderr, "bench density: %d registered functions at zero...\n", d.Registered)
	root, _, err := copies(fnRoot, d.Registered, time.Minute)
	defer os.RemoveAll(root)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	s, err := StartServe(e.Bin, []string{"--functions", root, "--flags", ""}, e.Log)
	if err != nil {
		return nil, err
	}
	started := time.Since(t0)
	time.Sleep(time.Second)
	serveRSS := RSS(s.Pid())
	s.Stop()
	rows = append(rows,
		Row{Name: fmt.Sprintf("%d registered functions at zero: time to start serve (exec to listening)", d.Registered), Value: ms(started)},
		Row{Name: fmt.Sprintf("%d registered functions at zero: serve's RSS (router + engine)", d.Registered), Value: mibs(serveRSS)},
	)
	return rows, nil
}

// The burst: this many functions at zero woken by one request each at the
// same moment, with a warm pool this big, in burstRounds rounds.
const (
	burstFunctions = 20
	burstPool      = 2
	burstRounds    = 3
)

// burst times the first responses of burstFunctions functions woken at
// once: dedicated, the pool's processes are specialised and the rest exec;
// shared, their sessions load into running processes.
func (d Density) burst(e Env, fnRoot, isolation string, extra ...string) ([]time.Duration, error) {
	idle := 2 * time.Second
	root, fns, err := copies(fnRoot, burstFunctions, idle)
	defer os.RemoveAll(root)
	if err != nil {
		return nil, err
	}
	s, err := StartServe(e.Bin, append([]string{"--functions", root, "--flags", "", "--pool-size", strconv.Itoa(burstPool), "--isolation", isolation}, extra...), e.Log)
	if err != nil {
		return nil, err
	}
	defer s.Stop()
	base := "http://" + s.Addr
	var out []time.Duration
	for round := 0; round <= burstRounds; round++ { // round 0 only brings every function up once
		if err := waitFor(context.Background(), "every function at zero", func() (bool, error) {
			a, err := GetAdmin(base)
			if err != nil {
				return false, err
			}
			for _, fn := range fns {
				if pids, _, _ := a.Instances(fn[0], fn[0]+"-00001"); len(pids) > 0 {
					return false, nil
				}
			}
			return len(a.WarmPool) >= burstPool, nil
		}); err != nil {
			return nil, err
		}
		lat := make([]time.Duration, len(fns))
		errs := make([]error, len(fns))
		var wg sync.WaitGroup
		for i, fn := range fns {
			wg.Add(1)
			go func() { defer wg.Done(); lat[i], _, errs[i] = call(base, fn) }()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				return nil, fmt.Errorf("burst, %s, round %d: %w", isolation, round, err)
			}
		}
		if round > 0 {
			out = append(out, lat...)
		}
	}
	return out, nil
}

// wakes times the first response for a function whose sessions were
// unloaded at zero while its shared process kept running.
func (d Density) wakes(e Env) ([]time.Duration, error) {
	ct, err := e.coldStartTarget([]string{"--pool-size", "1", "--flags", "", "--isolation", functions.IsolationShared})
	if err != nil {
		return nil, err
	}
	defer ct.close()
	rev := ct.m.DefaultRevision()
	var out []time.Duration
	for i := 0; i <= d.Wakes; i++ { // the first load makes the shared process: not a wake
		if err := waitFor(context.Background(), "scale to zero", func() (bool, error) {
			a, err := GetAdmin(ct.base)
			if err != nil {
				return false, err
			}
			pids, _, _ := a.Instances(ct.m.Name, rev)
			return len(pids) == 0, nil
		}); err != nil {
			return nil, err
		}
		t0 := time.Now()
		resp, err := densityClient.Post(ct.url, "application/json", strings.NewReader(string(ct.body)))
		if err != nil {
			return nil, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		took := time.Since(t0)
		if resp.StatusCode != 200 || resp.Header.Get("X-Pilotlight-Cold-Start") == "" {
			return nil, fmt.Errorf("wake %d: %s, cold start %q", i, resp.Status, resp.Header.Get("X-Pilotlight-Cold-Start"))
		}
		if i > 0 {
			out = append(out, took)
		}
	}
	return out, nil
}

// hot is a hot function's throughput in a shared process that also holds
// 50 idle and 5 trickling functions, against the same function alone in a
// dedicated process, in one run.
func (d Density) hot(ctx context.Context, e Env, fnRoot string) ([]Row, error) {
	root, fns, err := copies(fnRoot, 56, 10*time.Minute)
	defer os.RemoveAll(root)
	if err != nil {
		return nil, err
	}
	hotFn, trickling := fns[0], fns[1:6]
	load := func(isolation string, all [][2]string) (*loadgen.Result, error) {
		s, err := StartServe(e.Bin, []string{"--functions", root, "--flags", "", "--pool-size", "0", "--isolation", isolation}, e.Log)
		if err != nil {
			return nil, err
		}
		defer s.Stop()
		base := "http://" + s.Addr
		for _, fn := range all { // load every one: the idle ones hold their sessions
			if _, _, err := call(base, fn); err != nil {
				return nil, err
			}
		}
		var wg sync.WaitGroup
		{ // the trickle on both sides: what differs is only where the functions run
			for _, fn := range trickling {
				wg.Add(1)
				go func() {
					defer wg.Done()
					loadgen.Run(ctx, loadgen.Config{URL: base + "/functions/" + fn[0], Body: func(int, int) []byte { return []byte(densityBodies[fn[1]]) },
						Concurrency: 1, Duration: e.Duration, Interval: 100 * time.Millisecond})
				}()
			}
		}
		r := loadgen.Run(ctx, loadgen.Config{URL: base + "/functions/" + hotFn[0], Body: func(int, int) []byte { return []byte(densityBodies[hotFn[1]]) },
			Concurrency: 8, Duration: e.Duration})
		wg.Wait()
		if r.Unanswered() > 0 {
			return nil, fmt.Errorf("hot function, %s: %s", isolation, r)
		}
		return r, nil
	}
	shared, err := load(functions.IsolationShared, fns)
	if err != nil {
		return nil, err
	}
	// Dedicated: the hot and the trickling ones (the 50 idle would be 50
	// idle processes, costing memory, not the hot one's CPU).
	ded, err := load(functions.IsolationDedicated, fns[:6])
	if err != nil {
		return nil, err
	}
	ratio := shared.RPS() / ded.RPS()
	return []Row{
		{Name: "hot function in a shared process beside 50 idle + 5 trickling (8 clients)", Value: shared.String()},
		{Name: "the same function dedicated, the 5 trickling ones in processes of their own (8 clients)", Value: ded.String()},
		{Name: "hot throughput shared ÷ dedicated", Value: strconv.FormatFloat(ratio, 'f', 3, 64), Goal: "≥ 0.95", Met: met(ratio >= 0.95)},
	}, nil
}
