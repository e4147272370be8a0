// Package loadtest is the load and fault suite (`pilotlight loadtest`,
// `make loadtest`): a real `pilotlight serve` on loopback under steady load,
// a 10× step, instances SIGKILLed every few seconds, the flag file rewritten
// (valid and invalid versions), and a scale-to-zero/scale-from-zero cycle,
// all bounded in time. It accounts for every request and fails when one is
// lost or a 5xx came from anything but deliberate overload shedding.
package loadtest

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/pilotlight/pilotlight/internal/atomicfile"
	"github.com/pilotlight/pilotlight/internal/bench"
	"github.com/pilotlight/pilotlight/internal/loadgen"
	"github.com/pilotlight/pilotlight/router"
)

// Config bounds the suite.
type Config struct {
	Bin       string        // pilotlight binary
	Functions string        // functions root
	FlagsFile string        // flag file to copy and rewrite during the flags phase ("" skips it)
	Phase     time.Duration // length of each load phase
	Clients   int           // steady concurrency; the step phase uses 10×
	Log       io.Writer
}

// Phase is one row of the report.
type Phase struct {
	Name     string
	Result   *loadgen.Result
	Shed     int // 503/429 marked as deliberate shedding
	Bad5xx   int // any other 5xx
	Note     string
	Duration time.Duration
}

// Report is the suite's outcome.
type Report struct {
	Phases []Phase
	MaxRSS int64 // serve plus every child, sampled
}

// OK says whether the platform kept its promises: nothing lost, no unexpected 5xx.
func (r *Report) OK() bool {
	for _, p := range r.Phases {
		if p.Result.Lost > 0 || p.Bad5xx > 0 {
			return false
		}
	}
	return true
}

// Print writes the table.
func (r *Report) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight|tabwriter.Debug)
	fmt.Fprintln(tw, "phase\tsent\tsucceeded\tfailed by status\tshed (503/429)\tunexpected 5xx\tlost\tp50\tp99\t")
	for _, p := range r.Phases {
		res := p.Result
		fmt.Fprintf(tw, "%s\t%d\t%d\t%v\t%d\t%d\t%d\t%s\t%s\t\n", p.Name, res.Sent, res.Succeeded, res.Failed(), p.Shed, p.Bad5xx, res.Lost,
			res.Quantile(.5).Round(10*time.Microsecond), res.Quantile(.99).Round(10*time.Microsecond))
	}
	tw.Flush()
	fmt.Fprintf(w, "max RSS (serve + instances + pool): %.1f MiB\n", float64(r.MaxRSS)/(1<<20))
	for _, p := range r.Phases {
		if p.Note != "" {
			fmt.Fprintf(w, "%s: %s\n", p.Name, p.Note)
		}
	}
	if r.OK() {
		fmt.Fprintln(w, "result: PASS (no request lost, no unexpected 5xx)")
	} else {
		fmt.Fprintln(w, "result: FAIL")
	}
}

// counter classifies answers while a phase runs: the load generator counts
// statuses, this counts which 503s were deliberate shedding.
type counter struct{ shed, bad atomic.Int64 }

type countingTransport struct {
	next http.RoundTripper
	c    *counter
}

func (t countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(r)
	if err == nil && resp.StatusCode >= 500 || err == nil && resp.StatusCode == 429 {
		if resp.Header.Get(router.ShedHeader) != "" {
			t.c.shed.Add(1)
		} else if resp.StatusCode >= 500 {
			t.c.bad.Add(1)
		}
	}
	return resp, err
}

// Run runs every phase and returns the report.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Clients < 1 {
		cfg.Clients = 4
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	args := []string{"--functions", cfg.Functions, "--pool-size", "1", "--scale-to-zero-after", "1s", "--stable-window", "6s", "--panic-window", "1s"}
	var flagsPath string
	if cfg.FlagsFile != "" {
		if !serveHasFlags(cfg.Bin) {
			return nil, fmt.Errorf("flags phase: %s serve takes no --flags; rebuild it (make build) or pass an empty flag file to skip the phase", cfg.Bin)
		}
		dir, err := os.MkdirTemp("", "pilotlight-loadtest-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		raw, err := os.ReadFile(cfg.FlagsFile)
		if err != nil {
			return nil, fmt.Errorf("flags phase: %w (pass an empty flag file to skip the phase)", err)
		}
		flagsPath = filepath.Join(dir, "flags.json")
		if err := os.WriteFile(flagsPath, raw, 0o644); err != nil {
			return nil, err
		}
		args = append(args, "--flags", flagsPath)
	}
	s, err := bench.StartServe(cfg.Bin, args, cfg.Log)
	if err != nil {
		return nil, err
	}
	defer s.Stop()
	base := "http://" + s.Addr
	rep := &Report{}
	stopRSS := make(chan struct{})
	var rssWG sync.WaitGroup
	rssWG.Add(1)
	go func() {
		defer rssWG.Done()
		for {
			total := bench.RSS(s.Pid())
			for _, kid := range bench.Children(s.Pid()) {
				total += bench.RSS(kid)
			}
			if total > rep.MaxRSS {
				rep.MaxRSS = total
			}
			select {
			case <-stopRSS:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	defer func() { close(stopRSS); rssWG.Wait() }()

	phase := func(name string, clients int, during func(context.Context) string) Phase {
		c := &counter{}
		client := loadgen.NewClient(clients)
		client.Transport = countingTransport{next: client.Transport, c: c}
		pctx, cancel := context.WithCancel(ctx)
		notec := make(chan string, 1)
		go func() {
			note := ""
			if during != nil {
				note = during(pctx)
			}
			notec <- note
		}()
		begin := time.Now()
		res := runMixed(ctx, client, base, clients, cfg.Phase)
		cancel()
		note := <-notec
		fmt.Fprintf(os.Stderr, "loadtest: %s: %s\n", name, res)
		return Phase{Name: name, Result: res, Shed: int(c.shed.Load()), Bad5xx: int(c.bad.Load()), Note: note, Duration: time.Since(begin)}
	}

	// Warm the platform so the first phase measures steady state.
	runMixed(ctx, loadgen.NewClient(2), base, 2, 500*time.Millisecond)
	rep.Phases = append(rep.Phases, phase("steady", cfg.Clients, nil))
	rep.Phases = append(rep.Phases, phase("step to 10x", 10*cfg.Clients, nil))
	rep.Phases = append(rep.Phases, phase("SIGKILL an instance every 1s", cfg.Clients*2, func(ctx context.Context) string {
		killed := 0
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return fmt.Sprintf("%d instances killed with SIGKILL", killed)
			case <-t.C:
				a, err := bench.GetAdmin(base)
				if err != nil {
					continue
				}
				pids, _, _ := a.Instances("fraud", "fraud-00001")
				if len(pids) > 0 {
					if syscall.Kill(pids[rand.IntN(len(pids))], syscall.SIGKILL) == nil {
						killed++
					}
				}
			}
		}
	}))
	if flagsPath != "" {
		rep.Phases = append(rep.Phases, phase("flag file rewritten (valid and invalid)", cfg.Clients*2, func(ctx context.Context) string {
			good, _ := os.ReadFile(flagsPath)
			writes := 0
			for i := 0; ; i++ {
				select {
				case <-ctx.Done():
					_ = atomicfile.Write(flagsPath, good, 0o644)
					return fmt.Sprintf("%d rewrites, every third one invalid JSON", writes)
				case <-time.After(200 * time.Millisecond):
				}
				content := good
				if i%3 == 2 {
					content = []byte(`{"flags": {"fraud-revision": {"state": "ENABLED", "variants": `)
				}
				if atomicfile.Write(flagsPath, content, 0o644) == nil {
					writes++
				}
			}
		}))
	}
	// Scale to zero: no load until every instance exits, then load again from zero.
	deadline := time.Now().Add(30 * time.Second)
	note := ""
	for {
		a, err := bench.GetAdmin(base)
		if err == nil {
			total := 0
			for _, f := range a.Functions {
				for _, r := range f.Revisions {
					total += len(r.Instances)
				}
			}
			if total == 0 {
				note = "every revision was at zero instances when the load resumed"
				break
			}
		}
		if time.Now().After(deadline) {
			note = "did not reach zero instances within 30 s"
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	p := phase("scale from zero under load", cfg.Clients*2, nil)
	p.Note = note
	rep.Phases = append(rep.Phases, p)
	return rep, nil
}

var fraudBody = []byte(`{"amount": 912.40, "avg_amount_30d": 85.0, "merchant_category": "electronics", "country": "BR", "home_country": "US", "hour": 3, "device_new": true, "tx_last_24h": 7, "card_id": "c-1"}`)

func recommendBody(w, i int) []byte {
	return []byte(`{"user_id": ` + strconv.Itoa((w*131+i)%500) + `, "k": 10}`)
}

// runMixed sends fraud (three clients in four) and recommend requests at once.
func runMixed(ctx context.Context, client *http.Client, base string, clients int, d time.Duration) *loadgen.Result {
	fraudClients := max(1, clients*3/4)
	recClients := max(1, clients-fraudClients)
	var fr, rr *loadgen.Result
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		fr = loadgen.RunWith(ctx, client, loadgen.Config{URL: base + "/functions/fraud", Concurrency: fraudClients, Duration: d,
			Body: func(int, int) []byte { return fraudBody }})
	}()
	go func() {
		defer wg.Done()
		rr = loadgen.RunWith(ctx, client, loadgen.Config{URL: base + "/functions/recommend", Concurrency: recClients, Duration: d, Body: recommendBody})
	}()
	wg.Wait()
	fr.Merge(rr)
	fr.Elapsed = d
	return fr
}

// serveHasFlags reports whether this binary's serve takes --flags.
func serveHasFlags(bin string) bool {
	out, _ := exec.Command(bin, "serve", "--help").CombinedOutput()
	return strings.Contains(string(out), "--flags")
}
