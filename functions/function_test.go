package functions_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/pilotlight/pilotlight/functions"
	_ "github.com/pilotlight/pilotlight/functions/all"
)

const valid = `name: fraud
handler: fraud
revisions:
  - name: fraud-00001
    model: m.onnx
scaling:
  minScale: 1
  maxScale: 3
`

// TestBatchingNoneAndWarmup: `batching: none` reads back as batching off
// (and writes back as none), and a warm-up file that is not there is named
// with the manifest and field, like a missing model.
func TestBatchingNoneAndWarmup(t *testing.T) {
	m, err := functions.Parse("f.yaml", []byte(valid+"batching: none\nwarmup: warmup.json\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !m.Batching.None || m.Batching.MaxBatch != 1 || m.Warmup != "warmup.json" {
		t.Errorf("batching %+v, warmup %q", m.Batching, m.Warmup)
	}
	out, err := yaml.Marshal(m)
	if err != nil || !strings.Contains(string(out), "batching: none") {
		t.Errorf("marshalled: %v\n%s", err, out)
	}
	m, err = functions.Parse("f.yaml", []byte(valid+"batching:\n  maxBatch: 8\n"))
	if err != nil || m.Batching.None || m.Batching.MaxBatch != 8 || m.Batching.MaxDelay != functions.DefaultMaxDelay {
		t.Errorf("mapping form: %+v, %v", m.Batching, err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "m.onnx"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(dir, functions.ManifestFile), []byte(valid+"warmup: warmup.json\n"), 0o644)
	_, err = functions.LoadDir(dir)
	var fe *functions.FieldError
	if !errors.As(err, &fe) || fe.Field != "warmup" || !strings.Contains(err.Error(), filepath.Join(dir, "warmup.json")) {
		t.Errorf("missing warm-up file: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "warmup.json"), []byte("{}"), 0o644)
	if m, err := functions.LoadDir(dir); err != nil || m.WarmupPath() != filepath.Join(dir, "warmup.json") {
		t.Errorf("present warm-up file: %v", err)
	}
}

func TestManifestErrorsNameFileAndField(t *testing.T) {
	cases := []struct{ name, yaml, field string }{
		{"unknown key", valid + "colour: blue\n", "colour"},
		{"negative scale", strings.Replace(valid, "minScale: 1", "minScale: -1", 1), "scaling.minScale"},
		{"min above max", strings.Replace(valid, "minScale: 1", "minScale: 5", 1), "scaling.minScale"},
		{"revision Knative refuses", strings.Replace(valid, "fraud-00001", "Fraud_1", 1), "revisions[0].name"},
		{"revision not prefixed", strings.Replace(valid, "fraud-00001", "other-00001", 1), "revisions[0].name"},
		{"unknown handler", strings.Replace(valid, "handler: fraud", "handler: magic", 1), "handler"},
		{"bad provider", valid + "runtime:\n  provider: tpu\n", "runtime.provider"},
		{"unknown isolation", valid + "isolation: private\n", "isolation"},
		{"zero request rows", valid + "runtime:\n  maxRequestRows: -2\n", "runtime.maxRequestRows"},
		{"batching neither none nor a mapping", valid + "batching: off\n", `batching: "off"`},
		{"unknown key under batching", valid + "batching:\n  maxBatch: 4\n  axis: 1\n", "axis"},
		{"outcome window too large", valid + "outcomes:\n  maxPredictions: 2000000\n", "outcomes.maxPredictions"},
		{"outcome threshold of 1", valid + "outcomes:\n  maxPredictions: 10\n  threshold: 1\n", "outcomes.threshold"},
		{"negative outcome window", valid + "outcomes:\n  maxPredictions: 10\n  window: -1h\n", "outcomes.window"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := functions.Parse("functions/fraud/function.yaml", []byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), "functions/fraud/function.yaml") || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %v should name the file and %q", err, tc.field)
			}
		})
	}
	m, err := functions.Parse("f.yaml", []byte(valid))
	if err != nil {
		t.Fatal(err)
	}
	if m.Flag != "fraud-revision" || m.Runtime.Sessions != functions.DefaultSessions || m.Runtime.MaxRequestRows != functions.DefaultMaxRequestRows {
		t.Errorf("defaults not applied: %+v", m)
	}
	if m.Outcomes.Records() || m.Outcomes.Window != 0 {
		t.Errorf("outcomes recorded without maxPredictions: %+v", m.Outcomes)
	}
	rec, err := functions.Parse("f.yaml", []byte(valid+"outcomes:\n  maxPredictions: 1000\n"))
	if err != nil || rec.Outcomes != (functions.Outcomes{MaxPredictions: 1000, Window: functions.DefaultOutcomeWindow,
		Threshold: functions.DefaultOutcomeThreshold, K: functions.DefaultOutcomeK}) {
		t.Errorf("outcome defaults: %+v, %v", rec.Outcomes, err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, functions.ManifestFile), []byte(valid), 0o644)
	_, err = functions.LoadDir(dir)
	var fe *functions.FieldError
	if !errors.As(err, &fe) || fe.Field != "revisions[0].model" || !strings.Contains(err.Error(), "make models") {
		t.Errorf("missing model file: %v", err)
	}
}

// FuzzParse feeds arbitrary function.yaml text to the manifest parser: it
// must never panic, and whatever it accepts must survive a round trip:
// marshalled back to YAML and parsed again, it is the same manifest (so
// nothing Parse accepts is lost or changed by the generated manifests and
// tools that write function.yaml).
func FuzzParse(f *testing.F) {
	f.Add([]byte(valid))
	f.Add([]byte("name: x\nhandler: tensor\nrevisions: [{name: x-1, model: a, tag: canary}]\nbatching: {maxDelay: 1ms}\n"))
	f.Add([]byte("name: x\nhandler: tensor\nflag: f\nrevisions: [{name: x-1, model: a}]\nscaling: {scaleToZeroAfter: 90s, initialScale: 2}\nruntime: {provider: cpu, maxBodyBytes: 4096}\n"))
	f.Add([]byte("name: x\nhandler: tensor\nrevisions: [{name: x-1, model: a}]\nbatching: none\nwarmup: w.json\n"))
	f.Add([]byte("{{{"))
	f.Add([]byte("name: &a x\nhandler: *a\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		m, err := functions.Parse("function.yaml", raw)
		if err != nil {
			return
		}
		out, err := yaml.Marshal(m)
		if err != nil {
			t.Fatalf("marshal an accepted manifest: %v", err)
		}
		again, err := functions.Parse("function.yaml", out)
		if err != nil {
			t.Fatalf("the marshalled form of an accepted manifest is refused: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(m, again) {
			t.Fatalf("round trip changed the manifest:\n%+v\n%+v\nvia\n%s", m, again, out)
		}
	})
}

// TestIsolationOf: the manifest's isolation wins; omitted, a model up to
// SharedModelMaxBytes is shared and a larger (or unreadable) one dedicated.
func TestIsolationOf(t *testing.T) {
	dir := t.TempDir()
	small, large := filepath.Join(dir, "small.onnx"), filepath.Join(dir, "large.onnx")
	if err := os.WriteFile(small, make([]byte, 1<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	// A sparse file: its size is what counts, not its blocks.
	f, err := os.Create(large)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(functions.SharedModelMaxBytes + 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, tc := range []struct{ isolation, model, want string }{
		{"", small, functions.IsolationShared},
		{"", large, functions.IsolationDedicated},
		{"", filepath.Join(dir, "missing.onnx"), functions.IsolationDedicated},
		{functions.IsolationDedicated, small, functions.IsolationDedicated},
		{functions.IsolationShared, large, functions.IsolationShared},
	} {
		m := &functions.Manifest{Isolation: tc.isolation, Dir: dir}
		if got := m.IsolationOf(functions.Revision{Model: tc.model}); got != tc.want {
			t.Errorf("isolation %q, model %s: %s, want %s", tc.isolation, filepath.Base(tc.model), got, tc.want)
		}
	}
}
