package router_test

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/advancedclimatesystems/gonnx/onnx"
	"google.golang.org/protobuf/proto"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/functions/fraud"
	"github.com/pilotlight/pilotlight/internal/testbin"
	"github.com/pilotlight/pilotlight/rollout"
)

// invertModel returns the fraud model with its probability output replaced
// by 1 - probability: decisions flip (block <-> approve) while the model
// still loads, runs in ONNX Runtime and answers 200 as fast as before.
func invertModel(t testing.TB, raw []byte) []byte {
	t.Helper()
	m := &onnx.ModelProto{}
	if err := proto.Unmarshal(raw, m); err != nil {
		t.Fatal(err)
	}
	g := m.Graph
	for _, n := range g.Node {
		for i, out := range n.Output {
			if out == "probability" {
				n.Output[i] = "probability_original"
			}
		}
	}
	g.Initializer = append(g.Initializer, &onnx.TensorProto{Name: "one", Dims: []int64{1}, DataType: int32(onnx.TensorProto_FLOAT), FloatData: []float32{1}})
	g.Node = append(g.Node, &onnx.NodeProto{Name: "invert", OpType: "Sub", Input: []string{"one", "probability_original"}, Output: []string{"probability"}})
	out, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// fraudRevisions writes a fraud function whose stable revision is the
// shipped logistic regression and whose candidate is candidate(that model).
func fraudRevisions(t testing.TB, root string, candidate func([]byte) []byte) *functions.Manifest {
	t.Helper()
	dir := filepath.Join(root, "fraud")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	model, err := os.ReadFile(filepath.Join(testbin.Root(), "functions", "fraud", "models", "fraud-00001.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "a.onnx"), model, 0o644)
	os.WriteFile(filepath.Join(dir, "b.onnx"), candidate(model), 0o644)
	manifest := "name: fraud\nhandler: fraud\nrevisions:\n  - name: fraud-00001\n    model: a.onnx\n    tag: stable\n  - name: fraud-00002\n    model: b.onnx\n    tag: canary\nruntime:\n  sessions: 1\nscaling:\n  maxScale: 2\n"
	m := testbin.WriteFunction(t, dir, manifest)
	if err := m.CheckModels(); err != nil {
		t.Fatal(err)
	}
	return m
}

const fraudFlags = `{"flags": {"fraud-revision": {"state": "ENABLED", "variants": {"stable": "fraud-00001", "canary": "fraud-00002"}, "defaultVariant": "stable"}}}`

// sample is one client request under load.
type sample struct {
	start, end time.Time
	revision   string
	status     int
	cold       bool
}

// fraudLoad posts real transactions (the fraud generator's holdout) from a
// few clients until stop, recording every answer.
type fraudLoad struct {
	mu      sync.Mutex
	samples []sample
	stop    chan struct{}
	wg      sync.WaitGroup
}

func startFraudLoad(t testing.TB, url string, clients int) *fraudLoad {
	t.Helper()
	txs := fraud.Generate(fraud.HoldoutSeed, 500)
	bodies := make([][]byte, len(txs))
	for i, ex := range txs {
		bodies[i], _ = json.Marshal(ex.Tx)
	}
	l := &fraudLoad{stop: make(chan struct{})}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	for c := range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := c; ; i += clients {
				select {
				case <-l.stop:
					return
				default:
				}
				s := sample{start: time.Now()}
				resp, err := client.Post(url, "application/json", strings.NewReader(string(bodies[i%len(bodies)])))
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					s.status, s.revision, s.cold = resp.StatusCode, resp.Header.Get("X-Pilotlight-Revision"), resp.Header.Get("X-Pilotlight-Cold-Start") != ""
				}
				s.end = time.Now()
				l.mu.Lock()
				l.samples = append(l.samples, s)
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *fraudLoad) finish() []sample {
	close(l.stop)
	l.wg.Wait()
	return l.samples
}

// between returns the samples that started in [from, to).
func between(ss []sample, from, to time.Time) []sample {
	var out []sample
	for _, s := range ss {
		if !s.start.Before(from) && s.start.Before(to) {
			out = append(out, s)
		}
	}
	return out
}

func p99(ss []sample) time.Duration {
	if len(ss) == 0 {
		return 0
	}
	ds := make([]time.Duration, len(ss))
	for i, s := range ss {
		ds[i] = s.end.Sub(s.start)
	}
	slices.Sort(ds)
	return ds[(len(ds)*99)/100]
}

func waitRollout(t testing.TB, p *flagPlatform, fn string) rollout.Status {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		st, _ := p.rollouts.Status(fn)
		if st.State != rollout.StateRunning {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("rollout of %s still running: %+v", fn, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestGatesRollBackAnInvertedFraudModel: the candidate answers 200 as fast
// as the stable revision (perfect HTTP metrics) but its decisions are
// inverted; the prediction gates, judging shadow copies of live traffic,
// roll it back before any client sees it.
func TestGatesRollBackAnInvertedFraudModel(t *testing.T) {
	dir := t.TempDir()
	m := fraudRevisions(t, dir, func(b []byte) []byte { return invertModel(t, b) })
	p := startFlagPlatform(t, []*functions.Manifest{m}, flagFile(t, dir, fraudFlags))
	load := startFraudLoad(t, p.url+"/functions/fraud", 4)
	if n := p.eng.ReadyInstances("fraud", "fraud-00002"); n != 0 {
		t.Fatalf("the candidate has %d instances before any traffic; it should start from zero", n)
	}
	spec := rollout.Spec{Function: "fraud", To: "fraud-00002", Steps: []int{50, 100}, Interval: time.Second, MinRequests: 10,
		MaxP99: 5 * time.Second, Shadow: 50, MinAgreement: 0.95, MaxScoreDelta: 0.05}
	if _, err := p.rollouts.Start(spec); err != nil {
		t.Fatal(err)
	}
	st := waitRollout(t, p, "fraud")
	samples := load.finish()

	last := st.Decisions[len(st.Decisions)-1]
	t.Logf("verdict: %s %s in phase %s: %s", last.Verdict, last.Check, last.Phase, last.Reason)
	if st.State != rollout.StateRolledBack || last.Check != rollout.CheckAgreement || last.Phase != rollout.PhaseShadow {
		t.Fatalf("want a rollback by the agreement gate on shadow traffic: %s %+v", st.State, st.Decisions)
	}
	if last.Agreement >= 0.95 || last.ScoreDelta <= 0.05 || last.ShadowFailed != 0 || last.Compared < 10 {
		t.Errorf("numbers: %+v (want agreement < 0.95, |Δp| > 0.05, no failed shadow request)", last)
	}
	for _, s := range samples {
		if s.status != http.StatusOK || s.revision != "fraud-00001" {
			t.Fatalf("a client got %d from %q: only the serving revision answers clients", s.status, s.revision)
		}
	}
	if v := testbin.Metric(t, p.reg, "pilotlight_rollout_decisions_total", map[string]string{"function": "fraud", "verdict": "rollback", "check": "agreement"}); v != 1 {
		t.Errorf("pilotlight_rollout_decisions_total{rollback,agreement} = %v", v)
	}
	// The candidate scaled from zero for shadow traffic alone (a cold start, counted like any).
	if v := testbin.Metric(t, p.reg, "pilotlight_shadow_requests_total", map[string]string{"function": "fraud", "revision": "fraud-00002", "result": "compared"}); !(v >= 10) {
		t.Errorf("compared shadow requests %v", v)
	}
	if v := testbin.Metric(t, p.reg, "pilotlight_cold_starts_total", map[string]string{"function": "fraud", "revision": "fraud-00002"}); !(v >= 1) {
		t.Errorf("candidate cold starts %v, want it started for shadow traffic", v)
	}
}

// TestBlueGreenUndoUnderLoad: a candidate that agrees passes its shadow
// phase, is pre-scaled, takes 100% in one flag write, and `undo` switches
// back in one write, all under load with no failed request and no cold
// start once the candidate was pre-scaled. It logs the measured undo time
// and the client p99 with and without shadow traffic.
func TestBlueGreenUndoUnderLoad(t *testing.T) {
	r := runBlueGreenUndo(t)
	t.Logf("undo: %s from the undo call to the last request served by the candidate; client p99 %s without shadow traffic, %s with (%d and %d requests)",
		r.undoToPrevious, r.p99Plain, r.p99Shadow, r.nPlain, r.nShadow)
}

// BenchmarkBlueGreenUndo reports, from one run under load, the time from
// `undo` to the last request served by the candidate and the client p99
// without and with shadow traffic (100% of requests copied), from
// alternating one-second windows of the same run.
func BenchmarkBlueGreenUndo(b *testing.B) {
	var r blueGreenResult
	for range b.N {
		r = runBlueGreenUndo(b)
	}
	b.ReportMetric(float64(r.undoToPrevious.Microseconds())/1000, "undo-ms")
	b.ReportMetric(float64(r.p99Plain.Microseconds())/1000, "p99-plain-ms")
	b.ReportMetric(float64(r.p99Shadow.Microseconds())/1000, "p99-shadow-ms")
	b.ReportMetric(float64(r.p99Shadow)/float64(r.p99Plain), "p99-shadow/plain")
}

type blueGreenResult struct {
	undoToPrevious      time.Duration
	p99Plain, p99Shadow time.Duration
	nPlain, nShadow     int
}

func runBlueGreenUndo(t testing.TB) blueGreenResult {
	dir := t.TempDir()
	m := fraudRevisions(t, dir, func(b []byte) []byte { return b }) // a retrain that reproduces the model
	p := startFlagPlatform(t, []*functions.Manifest{m}, flagFile(t, dir, fraudFlags))
	url := p.url + "/functions/fraud"
	load := startFraudLoad(t, url, 4)
	// Warm both revisions, then alternate one-second windows without and
	// with shadow traffic (every request copied to the candidate), so drift
	// in the shared machine's load falls on both sides alike.
	testbin.WaitFor(t, "the serving revision to answer", 30*time.Second, func() bool { return p.eng.ReadyInstances("fraud", "fraud-00001") > 0 })
	p.shadow.Mirror("fraud", "fraud-00001", "fraud-00002", 100)
	testbin.WaitFor(t, "the candidate to answer shadow copies", 30*time.Second, func() bool { return p.shadow.Totals("fraud", "fraud-00002").Compared > 0 })
	p.shadow.StopMirror("fraud")
	type window struct {
		from, to time.Time
		shadow   bool
	}
	var windows []window
	for i := range 6 {
		on := i%2 == 1
		if on {
			p.shadow.Mirror("fraud", "fraud-00001", "fraud-00002", 100)
		}
		from := time.Now()
		time.Sleep(time.Second) // a measurement window of steady load, not synchronisation
		windows = append(windows, window{from, time.Now(), on})
		p.shadow.StopMirror("fraud")
	}

	spec := rollout.Spec{Function: "fraud", To: "fraud-00002", Strategy: rollout.StrategyBlueGreen, Interval: time.Second, MinRequests: 10,
		MaxP99: 5 * time.Second, Shadow: 100, MinAgreement: 0.95, MaxScoreDelta: 0.05, KeepPrevious: 10 * time.Minute}
	if _, err := p.rollouts.Start(spec); err != nil {
		t.Fatal(err)
	}
	st := waitRollout(t, p, "fraud")
	if st.State != rollout.StatePromoted {
		t.Fatalf("blue-green: %s %+v", st.State, st.Decisions)
	}
	if !slices.ContainsFunc(st.Decisions, func(d rollout.Decision) bool {
		return d.Phase == rollout.PhaseShadow && d.Verdict == rollout.VerdictAdvance
	}) {
		t.Fatalf("no passing shadow phase: %+v", st.Decisions)
	}
	switched := st.Finished
	testbin.WaitFor(t, "every request on the candidate", 5*time.Second, func() bool {
		ss := load.snapshot()
		return len(ss) > 0 && ss[len(ss)-1].revision == "fraud-00002"
	})
	if n := p.eng.ReadyInstances("fraud", "fraud-00001"); n == 0 {
		t.Fatal("the previous revision was not kept warm")
	}
	undoAt := time.Now()
	if _, err := p.rollouts.Undo("fraud"); err != nil {
		t.Fatal(err)
	}
	// Keep the load on until requests have run on the previous revision for a while.
	testbin.WaitFor(t, "requests on the previous revision after the undo", 10*time.Second, func() bool {
		return len(between(load.snapshot(), undoAt.Add(time.Second), time.Now().Add(time.Hour))) >= 50
	})
	samples := load.finish()

	var res blueGreenResult
	var lastCandidate time.Time
	for _, s := range samples {
		if s.status != http.StatusOK {
			t.Fatalf("a request failed through the switch or the undo: %+v", s)
		}
		if s.start.After(switched) && s.cold {
			t.Errorf("a cold start after the pre-scaled switch: %+v", s)
		}
		if s.revision == "fraud-00002" && s.start.After(lastCandidate) {
			lastCandidate = s.start
		}
	}
	if after := between(samples, undoAt.Add(time.Second), time.Now().Add(time.Hour)); len(after) == 0 || slices.ContainsFunc(after, func(s sample) bool { return s.revision != "fraud-00001" }) {
		t.Fatal("requests still reached the candidate after the undo settled")
	}
	res.undoToPrevious = max(lastCandidate.Sub(undoAt), 0)
	var plain, shadowed []sample
	for _, w := range windows {
		if w.shadow {
			shadowed = append(shadowed, between(samples, w.from, w.to)...)
		} else {
			plain = append(plain, between(samples, w.from, w.to)...)
		}
	}
	res.p99Plain, res.p99Shadow, res.nPlain, res.nShadow = p99(plain), p99(shadowed), len(plain), len(shadowed)
	return res
}

func (l *fraudLoad) snapshot() []sample {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.samples)
}
