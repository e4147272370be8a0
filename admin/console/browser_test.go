package console_test

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	cdplog "github.com/chromedp/cdproto/log"
	cdpruntime "github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/admin/console"
	"github.com/pilotlight/pilotlight/flags"
	"github.com/pilotlight/pilotlight/internal/testbin"
	"github.com/pilotlight/pilotlight/rollout"
	"github.com/pilotlight/pilotlight/router/auth"
)

var update = flag.Bool("update", false, "write docs/console.png from the browser test's screenshot")

// waitFor bounds every wait on the page; a wait ends as soon as its condition holds.
const waitFor = 90 * time.Second

// chromiumPath finds Debian's chromium (hack/deps/browser.apt) or another Chrome.
func chromiumPath(t *testing.T) string {
	t.Helper()
	names := []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"}
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	t.Skipf("no Chromium on PATH (looked for %s): install Debian's chromium (hack/deps/browser.apt) to run the console's browser test", strings.Join(names, ", "))
	return ""
}

// browser is one headless Chromium with its console errors collected.
type browser struct {
	ctx      context.Context
	mu       sync.Mutex
	problems []string
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		// Only loopback: no name resolves, and the page is on 127.0.0.1.
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 1000),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	b := &browser{}
	ctx, cancelCtx := chromedp.NewContext(actx, chromedp.WithListener(b.listen))
	b.ctx = ctx
	// The first Run starts the browser; it must not carry a timeout.
	err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, cdplog.Enable, cdp.Empty{})
		return err
	}))
	if err != nil {
		cancelCtx()
		cancelAlloc()
		t.Fatalf("start headless Chromium: %v", err)
	}
	t.Cleanup(func() {
		cancelCtx()
		cancelAlloc()
	})
	return b
}

// listen collects what the page's console would show as an error. It runs
// on chromedp's reading goroutine, so it only records.
func (b *browser) listen(ev any) {
	switch e := ev.(type) {
	case *cdpruntime.EventConsoleAPICalled:
		if e.Type == cdpruntime.ConsoleAPICalledTypeError || e.Type == cdpruntime.ConsoleAPICalledTypeAssert {
			var args []string
			for _, a := range e.Args {
				args = append(args, string(a.Value)+a.Description)
			}
			b.problem("console.%s: %s", e.Type, strings.Join(args, " "))
		}
	case *cdpruntime.EventExceptionThrown:
		d := e.ExceptionDetails
		desc := d.Text
		if d.Exception != nil {
			desc += " " + d.Exception.Description
		}
		b.problem("exception at %s:%d: %s", d.URL, d.LineNumber, desc)
	case *cdplog.EventEntryAdded:
		if e.Entry.Level == cdplog.EntryLevelError {
			b.problem("%s error: %s %s", e.Entry.Source, e.Entry.Text, e.Entry.URL)
		}
	}
}

func (b *browser) problem(format string, args ...any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.problems = append(b.problems, fmt.Sprintf(format, args...))
}

// noErrors fails the test for every error the page's console saw, but
// those containing one of expected.
func (b *browser) noErrors(t *testing.T, expected ...string) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
next:
	for _, p := range b.problems {
		for _, e := range expected {
			if strings.Contains(p, e) {
				continue next
			}
		}
		t.Errorf("browser console: %s", p)
	}
}

// do runs actions with the wait bound.
func (b *browser) do(t *testing.T, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, waitFor)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// until waits for a JavaScript expression to be true on the page.
func (b *browser) until(t *testing.T, what, expr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, waitFor)
	defer cancel()
	start := time.Now()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(waitFor))); err != nil {
		t.Fatalf("waiting until %s: %v", what, err)
	}
	t.Logf("%s (after %s)", what, time.Since(start).Round(time.Millisecond))
}

// eval evaluates a JavaScript expression on the page.
func eval[T any](t *testing.T, b *browser, expr string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, waitFor)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// platform is a real `pilotlight serve --dev` with its console.
type platform struct {
	bin, base, console string
}

// startServe runs serve on loopback with args (add --dev for local development).
func startServe(t *testing.T, args ...string) *platform {
	t.Helper()
	bin := testbin.Pilotlight(t)
	cmd := exec.Command(bin, append([]string{"serve", "--addr", "127.0.0.1:0"}, args...)...)
	cmd.Dir = testbin.Root()
	cmd.Env = append(os.Environ(), "PILOTLIGHT_EBPF=0")
	logf, err := os.Create(filepath.Join(t.TempDir(), "serve.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = logf
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			if len(b) > 8000 {
				b = b[len(b)-8000:]
			}
			t.Logf("serve's log (tail):\n%s", b)
		}
	})
	p := &platform{bin: bin}
	sc := bufio.NewScanner(stdout)
	for p.console == "" && sc.Scan() {
		for _, w := range strings.Fields(sc.Text()) {
			if !strings.HasPrefix(w, "http://") {
				continue
			}
			if strings.Contains(sc.Text(), "console on") {
				p.console = w
			} else {
				p.base = w
			}
		}
	}
	if p.console == "" || p.base == "" {
		t.Fatalf("serve printed no listening and console lines (router %q, console %q)", p.base, p.console)
	}
	go io.Copy(io.Discard, stdout)
	return p
}

const tensorBody = `{"inputs":[{"name":"input_vectors","shape":[1,10],"datatype":"FP32","data":[1,2,3,4,5,6,7,8,9,10]}]}`

// post sends one request and returns its status and headers.
func post(t *testing.T, url, body string) (int, http.Header) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header
}

// traffic sends requests to url until the test ends (bounded in count).
func traffic(t *testing.T, url, body string, max int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for i := 0; i < max && ctx.Err() == nil; i++ {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
			if resp, err := http.DefaultClient.Do(req); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond): // a steady trickle, not a load test
			}
		}
	}()
}

func TestConsoleInABrowser(t *testing.T) {
	b := newBrowser(t)
	root := testbin.Root()
	flagsPath := filepath.Join(t.TempDir(), "flags.json")
	raw, err := os.ReadFile(filepath.Join(root, "config", "flags", "flags.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(flagsPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	p := startServe(t, "--dev", "--functions", filepath.Join(root, "functions"), "--flags", flagsPath)
	b.do(t, "open the console", chromedp.Navigate(p.console))

	b.until(t, "every function is shown", `["example-tensor","fraud","recommend"].every(n => document.getElementById("fn-" + n)) && document.querySelectorAll("article.fn").length === 3`)
	atZero := eval[bool](t, b, `(() => { const i = document.querySelector('#fn-example-tensor .inst'); return i.dataset.ready === "0" && i.textContent.includes("at zero"); })()`)
	if !atZero {
		t.Error("example-tensor has no instance yet, and the console does not say it is at zero")
	}
	probesNotice := eval[bool](t, b, `document.getElementById("probes").dataset.on === "false" && document.getElementById("notices").textContent.includes("eBPF probes are off")`)
	if !probesNotice {
		t.Error("probes are off and the console does not say so")
	}

	// Scale from zero: the new cold start appears in the waterfall with its phases.
	code, h := post(t, p.base+"/v2/models/example-tensor/infer", tensorBody)
	if code != 200 || h.Get("X-Pilotlight-Cold-Start") == "" {
		t.Fatalf("first request to example-tensor: %d, cold start header %q: want 200 after a cold start", code, h.Get("X-Pilotlight-Cold-Start"))
	}
	b.until(t, "the cold start's waterfall shows its phases up to the first response", `(() => {
		const wf = document.querySelector('#fn-example-tensor .wf');
		if (!wf) return false;
		const bars = [...wf.querySelectorAll('g.bar')].map(g => g.dataset.to);
		return bars.length >= 3 && (bars.includes("first_response") || bars.includes("first_write")) && bars.includes("ready");
	})()`)
	type waterfall struct {
		PID       string   `json:"pid"`
		Durations []string `json:"durations"`
	}
	wf := eval[waterfall](t, b, `(() => { const wf = document.querySelector('#fn-example-tensor .wf');
		return {pid: wf.dataset.pid, durations: [...wf.querySelectorAll('text.d')].map(t => t.textContent)}; })()`)
	if pid := lastColdPID(t, p.base, "example-tensor"); wf.PID != fmt.Sprint(pid) {
		t.Errorf("waterfall for pid %s, but /admin/functions says the latest cold start was pid %d", wf.PID, pid)
	}
	for _, d := range wf.Durations {
		if !strings.HasSuffix(d, " ms") && !strings.HasSuffix(d, " s") {
			t.Errorf("bar labelled %q, want a duration", d)
		}
	}

	// Traffic to fraud draws its rate and latency charts.
	traffic(t, p.base+"/functions/fraud", `{"amount": 912.40, "avg_amount_30d": 85.0, "merchant_category": "electronics", "country": "RO", "home_country": "DE", "hour": 3, "device_new": true, "tx_last_24h": 9}`, 5000)
	b.until(t, "fraud's charts have a line", `(() => {
		const rev = document.querySelector('#fn-fraud .rev[data-revision="fraud-00001"]');
		const d = (k) => rev.querySelector('[data-chart="' + k + '"] path').getAttribute("d");
		return d("latency").includes("L") && d("rate").includes("L");
	})()`)
	// fraud's small model runs in a shared runtime process, as the processes table shows.
	b.until(t, "a shared process holding fraud-00001", `!!document.querySelector('#processes tr[data-isolation="shared"] [data-rev="fraud-00001"]')`)
	// Its provider, why, and what the device is charged (no GPU here: nothing).
	b.until(t, "fraud-00001's provider and the process's device charge", `(() => {
		const row = document.querySelector('#processes tr[data-isolation="shared"]');
		const rev = row && row.querySelector('[data-rev="fraud-00001"]');
		return !!rev && rev.textContent.includes("cpu") && rev.title !== "" && row.textContent.includes("device 0 (CPU)");
	})()`)
	b.until(t, "fraud-00001's loads into its shared process", `(() => {
		const l = document.querySelector('#fn-fraud .rev[data-revision="fraud-00001"] .loads');
		return !!l && l.textContent.includes("scale_from_zero 1");
	})()`)

	// A rollout started through the CLI shows its steps and each analysis.
	out, err := exec.Command(p.bin, "rollout", "start", "fraud", "--to", "fraud-00002", "--steps", "10,25,50,100",
		"--interval", "3s", "--min-requests", "1", "--max-p99", "5s", "--max-error-rate", "0.5", "--detach", "--router", p.base).CombinedOutput()
	if err != nil {
		t.Fatalf("pilotlight rollout start: %v\n%s", err, out)
	}
	b.until(t, "the rollout shows its steps and an analysis", `(() => {
		const r = document.querySelector('.rollout[data-function="fraud"]');
		if (!r) return false;
		const steps = [...r.querySelectorAll('.step')].map(s => s.dataset.weight).join(",");
		return steps === "10,25,50,100" && r.querySelectorAll('tr[data-verdict]').length >= 2;
	})()`)
	if *update {
		ctx, cancel := context.WithTimeout(b.ctx, waitFor)
		defer cancel()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		dst := filepath.Join(root, "docs", "console.png")
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s (%d bytes)", dst, len(png))
	}
	b.until(t, "the rollout is promoted and listed as finished", `!!document.querySelector('#finished .rollout[data-function="fraud"][data-state="promoted"]')`)

	// A rollout that fails its check is shown plainly: rolled back, with the reason.
	out, err = exec.Command(p.bin, "rollout", "start", "fraud", "--to", "fraud-00001", "--steps", "50,100",
		"--interval", "1s", "--min-requests", "1", "--max-p99", "1us", "--detach", "--router", p.base).CombinedOutput()
	if err != nil {
		t.Fatalf("pilotlight rollout start: %v\n%s", err, out)
	}
	b.until(t, "the failed rollout is shown rolled back with its reason", `(() => {
		const r = document.querySelector('#finished .rollout[data-function="fraud"][data-state="rolled_back"]');
		return !!r && !!r.querySelector('.notice.bad') && r.textContent.includes("rolled back") && !!r.querySelector('tr[data-verdict="rollback"]');
	})()`)
	b.noErrors(t)
}

// lastColdPID reads the latest cold start's pid from GET /admin/functions.
func lastColdPID(t *testing.T, base, function string) int {
	t.Helper()
	resp, err := http.Get(base + "/admin/functions")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v struct {
		Functions []struct {
			Name      string
			Revisions []struct {
				LastCold *struct{ PID int } `json:"last_cold_start"`
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	for _, f := range v.Functions {
		if f.Name == function && len(f.Revisions) > 0 && f.Revisions[0].LastCold != nil {
			return f.Revisions[0].LastCold.PID
		}
	}
	t.Fatalf("/admin/functions has no cold start of %s", function)
	return 0
}

// TestConsoleWithFiftyFunctions makes 50 functions (the example tensor
// model, copied) and checks the page shows them all and keeps updating.
func TestConsoleWithFiftyFunctions(t *testing.T) {
	b := newBrowser(t)
	model, err := os.ReadFile(filepath.Join(testbin.Root(), "functions", "example-tensor", "model.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	const n = 50
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("fn-%02d", i)
		d := filepath.Join(dir, name)
		manifest := fmt.Sprintf("name: %s\nhandler: tensor\nrevisions:\n  - name: %s-00001\n    model: model.onnx\nscaling:\n  minScale: 0\n  maxScale: 1\n", name, name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "function.yaml"), []byte(manifest), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "model.onnx"), model, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := startServe(t, "--dev", "--functions", dir, "--flags", "")
	b.do(t, "open the console", chromedp.Navigate(p.console))
	b.until(t, "all 50 functions are shown", fmt.Sprintf(`document.querySelectorAll("article.fn").length === %d && !!document.getElementById("fn-fn-50")`, n))

	seq := eval[int](t, b, `Number(document.body.dataset.seq)`)
	if code, _ := post(t, p.base+"/v2/models/fn-37/infer", tensorBody); code != 200 {
		t.Fatalf("fn-37: %d", code)
	}
	b.until(t, "an update shows fn-37's cold start", fmt.Sprintf(`Number(document.body.dataset.seq) > %d && !!document.querySelector('#fn-fn-37 .wf g.bar[data-to="ready"]')`, seq))

	type states struct {
		NoFlags     bool `json:"noFlags"`
		RolloutsOff bool `json:"rolloutsOff"`
		Zero        int  `json:"zero"`
	}
	honest := eval[states](t, b, `({
		noFlags: document.getElementById("notices").textContent.includes("No flag file"),
		rolloutsOff: document.getElementById("rollouts").textContent.includes("rollout controller is off"),
		zero: [...document.querySelectorAll('article.fn .inst')].filter(i => i.textContent.includes("at zero")).length,
	})`)
	if !honest.NoFlags || !honest.RolloutsOff {
		t.Errorf("serve runs without flags and the console does not say so: %+v", honest)
	}
	if honest.Zero != n-1 {
		t.Errorf("%d functions shown at zero, want %d (all but fn-37)", honest.Zero, n-1)
	}
	b.noErrors(t)
}

// TestConsoleNeedsAnAdminKey runs serve with keys (no --dev): the console
// on the admin listener asks for a key, refuses one that is not admin, and
// shows the platform with an admin key.
func TestConsoleNeedsAnAdminKey(t *testing.T) {
	b := newBrowser(t)
	client, _ := auth.NewKey()
	ops, _ := auth.NewKey()
	keysFile := filepath.Join(t.TempDir(), "keys.yaml")
	doc := fmt.Sprintf("keys:\n  - id: client\n    hash: %s\n    functions: ['*']\n  - id: ops\n    hash: %s\n    admin: true\n", auth.Sum(client), auth.Sum(ops))
	if err := os.WriteFile(keysFile, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	adminAddr := ln.Addr().String()
	ln.Close()
	p := startServe(t, "--keys-file", keysFile, "--admin-addr", adminAddr, "--functions", filepath.Join(testbin.Root(), "functions"), "--flags", "")
	if !strings.HasPrefix(p.console, "http://"+adminAddr+"/") {
		t.Fatalf("console at %s, want it on the admin listener %s", p.console, adminAddr)
	}
	if resp, err := http.Get(p.base + "/ui/"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET /ui/ on the public listener: %d, want 401 (the console is on the admin listener)", resp.StatusCode)
		}
	}
	b.do(t, "open the console", chromedp.Navigate(p.console))
	b.until(t, "the console asks for a key", `!document.getElementById("login").hidden && document.getElementById("main").hidden && document.getElementById("login-msg").textContent.includes("missing API key")`)

	b.do(t, "enter a key that is not admin", chromedp.SendKeys(chromedp.ID("key"), client), chromedp.Click(chromedp.CSS("#login button")))
	b.until(t, "the console refuses it", `document.getElementById("login-msg").textContent.includes('key "client" is not an admin key') && document.getElementById("main").hidden`)

	b.do(t, "enter the admin key", chromedp.SendKeys(chromedp.ID("key"), ops), chromedp.Click(chromedp.CSS("#login button")))
	b.until(t, "the console shows the platform", `document.getElementById("login").hidden && document.querySelectorAll("article.fn").length === 3`)
	// The refused fetches are the browser's own log lines, not the page's errors.
	b.noErrors(t, "status of 401", "status of 403")
}

// TestConsoleShowsKernelPhases runs serve with the eBPF probes: the cold
// start's waterfall then shows the kernel's points (exec, listen, accept,
// first write) instead of the engine's marks. Dedicated isolation: the
// probes attribute kernel events by pid, and a shared process's pid holds
// many revisions (its wakes exec and listen nothing).
func TestConsoleShowsKernelPhases(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("eBPF probes need root (CAP_BPF and CAP_PERFMON); this test process is not root")
	}
	b := newBrowser(t)
	p := startServe(t, "--dev", "--ebpf", "--isolation", "dedicated", "--functions", filepath.Join(testbin.Root(), "functions"), "--flags", "")
	b.do(t, "open the console", chromedp.Navigate(p.console))
	b.until(t, "the console says the probes are on", `document.getElementById("probes") && document.getElementById("probes").dataset.on === "true"`)
	if code, h := post(t, p.base+"/v2/models/example-tensor/infer", tensorBody); code != 200 || h.Get("X-Pilotlight-Cold-Start") == "" {
		t.Fatalf("first request to example-tensor: %d, cold start header %q", code, h.Get("X-Pilotlight-Cold-Start"))
	}
	b.until(t, "the waterfall shows kernel phases from the arrival to the first write", `(() => {
		const wf = document.querySelector('#fn-example-tensor .wf[data-origin="kernel"]');
		if (!wf) return false;
		const bars = [...wf.querySelectorAll('g.bar')];
		return bars.length >= 3 && bars[0].dataset.from === "request_arrival" && bars.some(g => g.dataset.to === "first_write");
	})()`)
	b.noErrors(t)
}

// stateSource is a Source the test sets while the page watches.
type stateSource struct {
	mu sync.Mutex
	st console.State
}

func (s *stateSource) Read() console.State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st
}

func (s *stateSource) set(st console.State) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st = st
}

// TestConsoleHonestStates shows states a real serve rarely reaches on
// purpose, from a Source the test sets: an empty platform, then a Knative
// backend with a rolled-back rollout, then a rejected flag file.
func TestConsoleHonestStates(t *testing.T) {
	b := newBrowser(t)
	src := &stateSource{st: console.State{Backend: "local"}}
	// The flag watcher's reload counter, as it registers it.
	reg := prometheus.NewRegistry()
	reloads := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pilotlight_flags_reload_total"}, []string{"result"})
	reg.MustRegister(reloads)
	reloads.WithLabelValues(flags.ReloadSuccess).Inc()
	c, err := console.New(console.Config{Source: src, Gatherer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv := httptest.NewServer(c)
	defer srv.Close()

	b.do(t, "open the console", chromedp.Navigate(srv.URL+console.Path))
	b.until(t, "an empty platform is shown as such", `(() => {
		const n = document.getElementById("notices").textContent, r = document.getElementById("rollouts").textContent;
		return !!document.getElementById("empty") && document.getElementById("empty").textContent.includes("No functions are loaded") &&
			n.includes("warm pool is empty") && n.includes("eBPF probes are off") && n.includes("No flag file") && r.includes("rollout controller is off");
	})()`)

	started := time.Now().Add(-time.Minute)
	src.set(console.State{
		Backend:    "knative",
		Functions:  []console.Function{{Name: "fraud", Handler: "fraud", Flag: "fraud-revision", Revisions: []console.Revision{{Name: "fraud-00001", Weight: 100}, {Name: "fraud-00002"}}}},
		RolloutsOn: true,
		Rollouts: []rollout.Status{{Spec: rollout.Spec{Function: "fraud", To: "fraud-00002", Steps: []int{5, 50, 100}, Interval: time.Second, MaxErrorRate: 0.01, MaxP99: time.Second, MinRequests: 5},
			From: "fraud-00001", State: rollout.StateRolledBack, Step: 1, Started: started, Updated: started,
			Decisions: []rollout.Decision{
				{At: started, Weight: 5, Requests: 20, Verdict: "advance", Reason: "healthy at 5%", P99: "3.00 ms"},
				{At: started, Weight: 50, Requests: 40, Errors: 12, ErrorRate: 0.3, Verdict: "rollback", Reason: "error rate 0.3000 > 0.0100", P99: "4.00 ms"}}}},
		Flags: &console.Flags{Path: "/nonexistent/flags.json", Version: "0123456789abcdef"},
	})
	b.until(t, "the flag file is shown as loaded", `!!document.getElementById("reload") && document.getElementById("reload").dataset.result === "loaded"`)
	reloads.WithLabelValues(flags.ReloadError).Inc()
	b.until(t, "a rejected flag file is shown with the reason", `document.getElementById("reload").dataset.result === "error" &&
		document.getElementById("notices").textContent.includes("The flag file on disk is rejected") && document.getElementById("notices").textContent.includes("/nonexistent/flags.json")`)
	b.until(t, "Knative instances, the rolled-back rollout and its reason are shown", `(() => {
		const r = document.querySelector('#finished .rollout[data-function="fraud"][data-state="rolled_back"]');
		const steps = r ? [...r.querySelectorAll('.step')].map(s => s.className).join("|") : "";
		return !!document.getElementById("fn-fraud") && document.getElementById("fn-fraud").textContent.includes("instances are Knative's") &&
			!!r && r.querySelector('.notice.bad').textContent.includes("error rate 0.3000 > 0.0100") && steps === "step done|step failed|step";
	})()`)
	b.noErrors(t)
}
