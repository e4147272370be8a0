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
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/internal/bench"
	"github.com/pilotlight/pilotlight/internal/loadgen"
	"github.com/pilotlight/pilotlight/internal/testbin"
)

// Bounds of the live test's load.
const (
	livePhase       = 6 * time.Second
	liveConcurrency = 4
	livePacing      = 20 * time.Millisecond // per worker: at most 200 requests/s in all
	liveScaleToZero = 3 * time.Second
	liveWait        = 60 * time.Second // longest wait for any condition
	liveRange       = "1m"             // what $__rate_interval and $__range become
)

// TestEveryQueryAgainstRealPrometheus starts Debian's Prometheus scraping a
// live `pilotlight serve --ebpf` (the router and every instance) every
// second, drives a bounded load with three cold starts and a rollout, and
// requires every dashboard panel to return finite data and every rule of
// the PrometheusRule to evaluate without error.
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

	rulesPath, _ := writeRuleFile(t, dir)
	targetsPath := filepath.Join(dir, "targets.json")
	writeTargets(t, targetsPath, []string{serve.Addr})
	promAddr := testbin.FreeAddr(t)
	promCfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: pilotlight
    file_sd_configs:
      - files: [%q]
`, rulesPath, targetsPath)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(promCfg), 0o644); err != nil {
		t.Fatal(err)
	}
	promURL := "http://" + promAddr
	prom := exec.Command(promBin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		"--web.listen-address="+promAddr, "--enable-feature=exemplar-storage")
	testbin.StartDaemon(t, prom, promURL+"/-/ready", liveWait, "hack/deps/monitoring.apt installs it")

	body, err := bench.V2Body(base, "fraud", 1)
	if err != nil {
		t.Fatal(err)
	}
	load := func() {
		t.Helper()
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() { // instances come and go: keep Prometheus's targets current
			defer close(done)
			for {
				targets := []string{serve.Addr}
				if a, err := bench.GetAdmin(base); err == nil {
					for _, rev := range []string{"fraud-00001", "fraud-00002"} {
						_, ports, _ := a.Instances("fraud", rev)
						for _, p := range ports {
							targets = append(targets, "127.0.0.1:"+strconv.Itoa(p))
						}
					}
				}
				writeTargets(t, targetsPath, targets)
				select {
				case <-stop:
					return
				case <-time.After(250 * time.Millisecond):
				}
			}
		}()
		res := loadgen.Run(context.Background(), loadgen.Config{URL: base + "/v2/models/fraud/infer", Body: func(int, int) []byte { return body },
			Header: http.Header{"Content-Type": {"application/json"}}, Concurrency: liveConcurrency, Duration: livePhase, Interval: livePacing})
		// A few callers' mistakes, so the status-code panel has more than 200s.
		for i := 0; i < 5; i++ {
			if resp, err := http.Post(base+"/v2/models/fraud/infer", "application/json", strings.NewReader("{not json")); err == nil {
				resp.Body.Close()
			}
		}
		close(stop)
		<-done
		if res.Succeeded == 0 {
			t.Fatalf("no request succeeded under load: %+v\n%s", res.Status, serveLog.String())
		}
	}
	load()
	startRollout(t, base)
	// Scale to zero and come back, twice, each time from the warm pool: the
	// cold-start series exist before Prometheus watches the second one.
	for i := 0; i < 2; i++ {
		testbin.Poll(t, "fraud to scale to zero and the warm pool to refill", liveWait, 100*time.Millisecond, func() bool {
			a, err := bench.GetAdmin(base)
			if err != nil {
				return false
			}
			p1, _, _ := a.Instances("fraud", "fraud-00001")
			p2, _, _ := a.Instances("fraud", "fraud-00002")
			return len(p1)+len(p2) == 0 && len(a.WarmPool) > 0
		})
		load()
	}
	// Let the last scrapes land: the latest cold start is in Prometheus.
	testbin.Poll(t, "Prometheus to see the last cold start", liveWait, 100*time.Millisecond, func() bool {
		v, _ := query(promURL, `sum(rate(pilotlight_cold_start_duration_seconds_count[`+liveRange+`]))`)
		return len(v) > 0 && v[0] > 0
	})

	_, d := loadDashboard(t)
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		data := 0
		for _, tg := range p.Targets {
			expr := strings.NewReplacer("$function", ".*", "$__rate_interval", liveRange, "$__range", liveRange).Replace(tg.Expr)
			vals, err := query(promURL, expr)
			if err != nil {
				t.Errorf("panel %q query %s: %v\n%s", p.Title, tg.RefID, err, expr)
				continue
			}
			for _, v := range vals {
				if !math.IsNaN(v) && !math.IsInf(v, 0) {
					data++
					break
				}
			}
		}
		if data == 0 {
			t.Errorf("panel %q: no query returned finite data", p.Title)
		}
	}

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

func writeTargets(t *testing.T, path string, targets []string) {
	raw, _ := json.Marshal([]map[string]any{{"targets": targets}})
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o644); err != nil {
		t.Error(err)
		return
	}
	_ = os.Rename(tmp, path) // atomic: Prometheus never reads half a file
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
