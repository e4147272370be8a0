package config

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/internal/bench"
	"github.com/pilotlight/pilotlight/internal/loadgen"
	"github.com/pilotlight/pilotlight/internal/testbin"
)

// Bounds of the live test's load.
const (
	livePhase       = 6 * time.Second
	liveConcurrency = 2                     // per function
	livePacing      = 20 * time.Millisecond // per worker: at most 200 requests/s in all
	liveScaleToZero = 3 * time.Second
	liveWait        = 60 * time.Second // longest wait for any condition
	liveRange       = "1m"             // what $__rate_interval and $__range become
	// liveDiscovery bounds discovery (1s refresh) plus a first scrape (2s)
	// on a loaded machine.
	liveDiscovery = 10 * time.Second
)

// shippedRouterAddr is the router address config/monitoring/prometheus-local.yml
// names (make run's); the live test puts its own serve there, nothing else.
const (
	localScrapeFile   = "monitoring/prometheus-local.yml"
	shippedRouterAddr = "127.0.0.1:8080"
)

// TestEveryQueryAgainstRealPrometheus starts Debian's Prometheus configured
// only from the shipped config/monitoring/prometheus-local.yml (the router
// address replaced by this serve's) against a live `pilotlight serve --ebpf`,
// drives fraud and recommend traffic, lets both scale to zero and come back
// once, and requires every query of every dashboard panel to return finite
// data, but the opt-in syscall latency and, until a rollout ran, the rollout
// panels; then runs a rollout and requires those too. Every recording and
// alerting rule must evaluate without error.
func TestEveryQueryAgainstRealPrometheus(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the live Prometheus test runs a platform under load for about half a minute")
	}
	promBin := tool(t, "prometheus")
	bin := testbin.Pilotlight(t)
	dir := t.TempDir()
	root := testbin.Root()

	flagsRaw, err := os.ReadFile(filepath.Join(root, "config", "flags", "flags.json"))
	if err != nil {
		t.Fatal(err)
	}
	flagsPath := filepath.Join(dir, "flags.json") // the rollout edits it
	if err := os.WriteFile(flagsPath, flagsRaw, 0o644); err != nil {
		t.Fatal(err)
	}
	// Tracing on toward a collector that is not there: requests must not
	// notice, and the dropped-span counter gets data.
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+closedAddr(t))
	t.Setenv("OTEL_TRACES_SAMPLER", "always_on")
	var serveLog bytes.Buffer
	serve, err := bench.StartServe(bin, []string{"--functions", filepath.Join(root, "functions"), "--flags", flagsPath, "--ebpf",
		"--pool-size", "1", "--scale-to-zero-after", liveScaleToZero.String()}, &serveLog)
	if err != nil {
		t.Fatal(err)
	}
	defer serve.Stop()
	base := "http://" + serve.Addr

	cfgPath := writeLocalScrapeConfig(t, dir, serve.Addr)
	promAddr := testbin.FreeAddr(t)
	promURL := "http://" + promAddr
	prom := exec.Command(promBin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		"--web.listen-address="+promAddr, "--enable-feature=exemplar-storage")
	testbin.StartDaemon(t, prom, promURL+"/-/ready", liveWait, "hack/deps/monitoring.apt installs it")

	models := []string{"fraud", "recommend"}
	bodies := map[string][]byte{}
	for _, m := range models {
		b, err := bench.V2Body(base, m, 1)
		if err != nil {
			t.Fatal(err)
		}
		bodies[m] = b
	}
	load := func(models ...string) {
		t.Helper()
		results := make([]*loadgen.Result, len(models))
		var wg sync.WaitGroup
		for i, m := range models {
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[i] = loadgen.Run(context.Background(), loadgen.Config{URL: base + "/v2/models/" + m + "/infer", Body: func(int, int) []byte { return bodies[m] },
					Header: http.Header{"Content-Type": {"application/json"}}, Concurrency: liveConcurrency, Duration: livePhase, Interval: livePacing})
			}()
		}
		// A few callers' mistakes, so the status-code panel has more than 200s.
		for i := 0; i < 5; i++ {
			if resp, err := http.Post(base+"/v2/models/fraud/infer", "application/json", strings.NewReader("{not json")); err == nil {
				resp.Body.Close()
			}
		}
		wg.Wait()
		for i, res := range results {
			if res.Succeeded == 0 {
				t.Fatalf("no %s request succeeded under load: %+v\n%s", models[i], res.Status, tail(serveLog.String(), 3000))
			}
		}
	}
	atZero := func() {
		t.Helper()
		testbin.Poll(t, "fraud and recommend to scale to zero and the warm pool to refill", liveWait, 100*time.Millisecond, func() bool {
			a, err := bench.GetAdmin(base)
			if err != nil {
				return false
			}
			n := 0
			for _, f := range a.Functions {
				for _, r := range f.Revisions {
					p, _, _ := a.Instances(f.Name, r.Name)
					n += len(p)
				}
			}
			return n == 0 && len(a.WarmPool) > 0
		})
	}
	// Both functions from zero, back to zero, and from zero once more: the
	// second cold start happens while Prometheus already watches.
	load(models...)
	atZero()
	load(models...)
	testbin.Poll(t, "Prometheus to see the last cold start", liveWait, 100*time.Millisecond, func() bool {
		v, _ := query(promURL, `sum(rate(pilotlight_cold_start_duration_seconds_count[`+liveRange+`]))`)
		return len(v) > 0 && v[0] > 0
	})
	// Discovery found the instances, labelled them, and the instance's own
	// function and revision labels were kept as they are. Over a minute: an
	// instance that scaled to zero has gone stale.
	for _, c := range []struct{ what, expr string }{
		{"instance series from the instances job, with a pid label", `count(count_over_time(pilotlight_batch_run_seconds_count{job="pilotlight-instances", function="fraud", pid!=""}[1m]))`},
		{"instance series named by function/revision/pid", `count(count_over_time(pilotlight_runtime_requests_total{instance=~"recommend/recommend-[0-9]+/[0-9]+"}[1m]))`},
		{"router series from the router job", `count(pilotlight_requests_total{job="pilotlight"})`},
		{"an idle pool process scraped", `count(up{job="pilotlight-instances", instance=~"pool/[0-9]+"} == 1)`},
	} {
		found := func() bool { v, err := query(promURL, c.expr); return err == nil && len(v) > 0 && v[0] > 0 }
		deadline := time.Now().Add(liveDiscovery)
		for !found() && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
		}
		if v, err := query(promURL, c.expr); err != nil || len(v) == 0 || v[0] == 0 {
			t.Errorf("%s: %v %v\n%s\nwhat there is: %s", c.what, v, err, c.expr, seriesOf(promURL, `{__name__=~"pilotlight_batch_run_seconds_count|pilotlight_runtime_requests_total|up"}`))
		}
	}
	if n, err := seriesSince(promURL, `{__name__=~"pilotlight_.+", exported_function!=""}`, 5*time.Minute); err != nil || n > 0 {
		t.Errorf("%d series with exported_function (discovery's labels fought the instance's), %v", n, err)
	}

	_, d := loadDashboard(t)
	isRollout := func(expr string) bool { return strings.Contains(expr, "pilotlight_rollout_") }
	checked, total := checkQueries(t, promURL, d, func(expr string) bool {
		return !isRollout(expr) && !strings.Contains(expr, "pilotlight_bpf_network_syscall_seconds")
	})
	t.Logf("before any rollout: %d of %d dashboard queries return finite data (the rest: syscall latency, off unless asked, and rollout panels)", checked, total)

	// A rollout, with fraud traffic to judge: the rollout panels too.
	startRollout(t, base)
	load("fraud")
	testbin.Poll(t, "a rollout decision in Prometheus", liveWait, 100*time.Millisecond, func() bool {
		v, _ := query(promURL, `sum(pilotlight_rollout_decisions_total)`)
		return len(v) > 0 && v[0] > 0
	})
	checked, _ = checkQueries(t, promURL, d, isRollout)
	t.Logf("after a rollout: %d rollout queries return finite data", checked)

	// Every recording and alerting rule has been evaluated, without error.
	var unevaluated []string
	testbin.Poll(t, "every rule group to be evaluated", liveWait, 100*time.Millisecond, func() bool {
		unevaluated = unevaluated[:0]
		rs, err := rules(promURL)
		if err != nil {
			return false
		}
		for _, r := range rs {
			if r.LastEvaluation.IsZero() || r.LastEvaluation.Year() < 2000 {
				unevaluated = append(unevaluated, r.Name)
			}
		}
		return len(rs) > 0 && len(unevaluated) == 0
	})
	rs, err := rules(promURL)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Health != "ok" || r.LastError != "" {
			t.Errorf("rule %s: health %q, error %q", r.Name, r.Health, r.LastError)
		}
	}
	if t.Failed() {
		t.Logf("serve log (tail):\n%s", tail(serveLog.String(), 3000))
	}
}

// writeLocalScrapeConfig copies the shipped scrape config into dir with the
// router's address replaced, and the PrometheusRule's groups where its
// rule_files glob looks. It returns the config's path.
func writeLocalScrapeConfig(t *testing.T, dir, routerAddr string) string {
	t.Helper()
	raw, err := os.ReadFile(localScrapeFile)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(raw), shippedRouterAddr); n < 2 {
		t.Fatalf("%s names %s %d times; the test replaces that address (both jobs discover through it)", localScrapeFile, shippedRouterAddr, n)
	}
	cfgPath := filepath.Join(dir, "prometheus-local.yml")
	if err := os.WriteFile(cfgPath, []byte(strings.ReplaceAll(string(raw), shippedRouterAddr, routerAddr)), 0o644); err != nil {
		t.Fatal(err)
	}
	rulesDir := filepath.Join(dir, "pilotlight-rules")
	if err := os.Mkdir(rulesDir, 0o755); err != nil {
		t.Fatal(err)
	}
	rulesPath, _ := writeRuleFile(t, rulesDir)
	if err := os.Rename(rulesPath, filepath.Join(rulesDir, "pilotlight.yml")); err != nil {
		t.Fatal(err)
	}
	return cfgPath
}

// checkQueries runs every dashboard query want selects (template variables
// filled in) and reports each that fails or returns no finite value. It
// returns how many returned data, of how many were run.
func checkQueries(t *testing.T, promURL string, d grafanaDashboard, want func(expr string) bool) (withData, run int) {
	t.Helper()
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		for _, tg := range p.Targets {
			if !want(tg.Expr) {
				continue
			}
			run++
			expr := strings.NewReplacer("$function", ".*", "$__rate_interval", liveRange, "$__range", liveRange).Replace(tg.Expr)
			vals, err := query(promURL, expr)
			if err != nil {
				t.Errorf("panel %q query %s: %v\n%s", p.Title, tg.RefID, err, expr)
				continue
			}
			finite := false
			for _, v := range vals {
				if !math.IsNaN(v) && !math.IsInf(v, 0) {
					finite = true
					break
				}
			}
			if !finite {
				t.Errorf("panel %q query %s: no finite data (%v)\n%s", p.Title, tg.RefID, vals, expr)
				continue
			}
			withData++
		}
	}
	return withData, run
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func startRollout(t *testing.T, base string) {
	t.Helper()
	req := `{"function":"fraud","to":"fraud-00002","steps":[20,50],"interval":"2s","min_requests":1,"max_error_rate":0.5,"max_p99":"5s"}`
	resp, err := http.Post(base+"/admin/rollouts", "application/json", strings.NewReader(req))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start rollout: %s %s", resp.Status, b)
	}
}

// closedAddr is a loopback address nothing listens on now.
func closedAddr(t *testing.T) string { return testbin.FreeAddr(t) }

// query runs an instant query and returns the sample values.
func query(base, expr string) ([]float64, error) {
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, err
	}
	if out.Status != "success" {
		return nil, fmt.Errorf("%s", out.Error)
	}
	vals := make([]float64, 0, len(out.Data.Result))
	for _, r := range out.Data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("sample %q: %v", s, err)
		}
		vals = append(vals, v)
	}
	return vals, nil
}

// seriesOf returns what an instant query finds, label sets and values, for
// failure messages.
func seriesOf(base, expr string) string {
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// seriesSince counts the series match selects that had samples in the last d.
func seriesSince(base, match string, d time.Duration) (int, error) {
	q := url.Values{"match[]": {match}, "start": {strconv.FormatInt(time.Now().Add(-d).Unix(), 10)}}
	resp, err := http.Get(base + "/api/v1/series?" + q.Encode())
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var out struct {
		Status string           `json:"status"`
		Error  string           `json:"error"`
		Data   []map[string]any `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return 0, err
	}
	if out.Status != "success" {
		return 0, fmt.Errorf("%s", out.Error)
	}
	return len(out.Data), nil
}

type ruleState struct {
	Name           string    `json:"name"`
	Health         string    `json:"health"`
	LastError      string    `json:"lastError"`
	LastEvaluation time.Time `json:"lastEvaluation"`
}

func rules(base string) ([]ruleState, error) {
	resp, err := http.Get(base + "/api/v1/rules")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out struct {
		Data struct {
			Groups []struct {
				Rules []ruleState `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, err
	}
	var all []ruleState
	for _, g := range out.Data.Groups {
		all = append(all, g.Rules...)
	}
	return all, nil
}
