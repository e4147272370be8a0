package rollout

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/flags"

	"github.com/prometheus/client_golang/prometheus"
)

const flagsDoc = `{
  "flags": {
    "fraud-revision": {
      "state": "ENABLED",
      "variants": {"stable": "fraud-00001", "canary": "fraud-00002"},
      "defaultVariant": "stable",
      "targeting": {"if": [{"ends_with": [{"var": "email"}, "@pilotlight.dev"]}, "canary",
        {"fractional": [["stable", 90], ["canary", 10]]}]}
    },
    "other": {"state": "DISABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}
  }
}`

func writeFlags(t *testing.T, doc string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "flags.json")
	if err := os.WriteFile(p, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func flagOf(t *testing.T, path string) map[string]any {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("the controller wrote invalid JSON: %v", err)
	}
	return doc["flags"].(map[string]any)["fraud-revision"].(map[string]any)
}

func TestSplitReplacesTheFractionalInPlace(t *testing.T) {
	p := writeFlags(t, flagsDoc)
	ff, err := flags.OpenFlagEdit(p, "fraud-revision")
	if err != nil {
		t.Fatal(err)
	}
	ff.SetSplit(ff.VariantFor("fraud-00001"), ff.VariantFor("fraud-00002"), 25)
	if err := ff.Write(); err != nil {
		t.Fatal(err)
	}
	f := flagOf(t, p)
	args := f["targeting"].(map[string]any)["if"].([]any)
	if len(args) != 3 || args[1] != "canary" {
		t.Fatalf("the targeted rule before the split was lost: %v", args)
	}
	got := args[2].(map[string]any)["fractional"]
	want := []any{[]any{"stable", 75.0}, []any{"canary", 25.0}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("fractional = %v, want %v", got, want)
	}
	// Other flags are untouched.
	raw, _ := os.ReadFile(p)
	var doc map[string]any
	json.Unmarshal(raw, &doc)
	if doc["flags"].(map[string]any)["other"].(map[string]any)["state"] != "DISABLED" {
		t.Error("another flag changed")
	}
}

func TestSplitWithoutFractionalAndNewVariant(t *testing.T) {
	p := writeFlags(t, `{"flags": {"fraud-revision": {"state": "ENABLED", "variants": {"stable": "fraud-00001"}, "defaultVariant": "stable"}}}`)
	ff, _ := flags.OpenFlagEdit(p, "fraud-revision")
	canary := ff.VariantFor("fraud-00002")
	ff.SetSplit("stable", canary, 5)
	ff.Write()
	f := flagOf(t, p)
	if f["variants"].(map[string]any)[canary] != "fraud-00002" {
		t.Fatalf("no variant added for the canary revision: %v", f["variants"])
	}
	want := map[string]any{"fractional": []any{[]any{"stable", 95.0}, []any{canary, 5.0}}}
	if !reflect.DeepEqual(f["targeting"], want) {
		t.Fatalf("targeting = %v", f["targeting"])
	}
	ff, _ = flags.OpenFlagEdit(p, "fraud-revision")
	ff.SetStatic(canary)
	ff.Write()
	f = flagOf(t, p)
	if f["defaultVariant"] != canary || len(f["targeting"].(map[string]any)) != 0 {
		t.Fatalf("promotion left %v", f)
	}
	if _, err := flags.OpenFlagEdit(p, "nope"); err == nil {
		t.Error("a missing flag was not an error")
	}
}

func TestQuantileLikePromQL(t *testing.T) {
	bs := []bucket{{0.01, 50}, {0.05, 90}, {0.1, 99}, {0.5, 100}, {math.Inf(1), 100}}
	if got := quantile(0.5, bs); got != 10*time.Millisecond {
		t.Errorf("p50 = %s, want 10ms", got)
	}
	if got := quantile(0.99, bs); got != 100*time.Millisecond {
		t.Errorf("p99 = %s, want 100ms", got)
	}
	if got := quantile(0.95, bs); math.Abs(float64(got-time.Duration(77.78*float64(time.Millisecond)))) > float64(time.Millisecond) {
		t.Errorf("p95 = %s, want about 77.8ms (linear in the 50–100 ms bucket)", got)
	}
	if got := quantile(0.99, nil); got != 0 {
		t.Errorf("empty = %s", got)
	}
}

func TestSampleReadsTheRoutersSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	req := prometheus.NewCounterVec(prometheus.CounterOpts{Name: requestsMetric}, []string{"function", "revision", "code"})
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: durationMetric, Buckets: []float64{.01, .1, 1}}, []string{"function", "revision"})
	reg.MustRegister(req, dur)
	src := GathererSource{Gatherer: reg}
	a, _ := src.sample(context.Background(), "fraud", "fraud-00002")
	req.WithLabelValues("fraud", "fraud-00002", "200").Add(90)
	req.WithLabelValues("fraud", "fraud-00002", "503").Add(10)
	req.WithLabelValues("fraud", "fraud-00002", "400").Add(5)
	req.WithLabelValues("fraud", "fraud-00001", "500").Add(1000)
	for i := 0; i < 100; i++ {
		dur.WithLabelValues("fraud", "fraud-00002").Observe(0.005)
	}
	dur.WithLabelValues("fraud", "fraud-00002").Observe(0.5)
	b, _ := src.sample(context.Background(), "fraud", "fraud-00002")
	w := between(a, b)
	if w.Requests != 105 || w.Errors != 10 || w.Source != SourceLocal || w.Replicas != 1 {
		t.Fatalf("window = %+v: want 105 requests, 10 errors (4xx are the caller's, not the canary's)", w)
	}
	if w.P99 > 10*time.Millisecond {
		t.Errorf("p99 = %s, want within the first bucket", w.P99)
	}
}

func TestSpecValidation(t *testing.T) {
	c := New(Config{FlagsPath: writeFlags(t, flagsDoc)})
	for _, spec := range []Spec{
		{Function: "nope", To: "x"},
	} {
		if _, err := c.Start(spec); err == nil {
			t.Errorf("spec %+v accepted", spec)
		}
	}
	steps, err := ParseSteps("5, 25,50")
	if err != nil || !reflect.DeepEqual(steps, []int{5, 25, 50}) {
		t.Errorf("ParseSteps = %v %v", steps, err)
	}
	if _, err := ParseSteps("5,x"); err == nil {
		t.Error("bad steps accepted")
	}
}

func TestSpecJSONUsesDurationStrings(t *testing.T) {
	b, err := json.Marshal(Spec{Function: "fraud", To: "fraud-00002", Interval: 30 * time.Second, MaxP99: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	json.Unmarshal(b, &got)
	if got["interval"] != "30s" || got["max_p99"] != "50ms" || got["function"] != "fraud" {
		t.Fatalf("spec JSON = %s", b)
	}
}

// The admin API writes a Spec's durations as strings; the CLI reads them back.
func TestSpecJSONRoundTrip(t *testing.T) {
	in := Spec{Function: "fraud", To: "fraud-00002", Steps: []int{5, 100}, Interval: 1500 * time.Millisecond, MaxErrorRate: 0.01, MaxP99: 250 * time.Millisecond, MinRequests: 3}
	b, err := json.Marshal(Status{Spec: in, State: StateRunning})
	if err != nil {
		t.Fatal(err)
	}
	var out Status
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	if !reflect.DeepEqual(out.Spec, in) {
		t.Errorf("round trip: %+v, want %+v", out.Spec, in)
	}
	if err := json.Unmarshal([]byte(`{"interval":"soon"}`), &out.Spec); err == nil {
		t.Error("a malformed interval decoded without error")
	}
}
