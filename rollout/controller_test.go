package rollout

import (
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/pilotlight/pilotlight/functions"
)

// The fakes below stand in for the router's metrics, the Shadower and the
// engine: the decision logic is tested without a network or processes, and
// each sample advances the observed numbers by one interval's worth, so no
// test waits on wall-clock traffic.

// feedingGatherer adds one interval's traffic for the candidate each time
// the controller samples the router's series.
type feedingGatherer struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	mu       sync.Mutex
	ok, fail int           // requests answered 200 / 503 per sample
	latency  time.Duration // of each request
}

func newFeeding() *feedingGatherer {
	g := &feedingGatherer{reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: requestsMetric}, []string{"function", "revision", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: durationMetric, Buckets: prometheus.DefBuckets}, []string{"function", "revision"})}
	g.reg.MustRegister(g.requests, g.duration)
	return g
}

func (g *feedingGatherer) set(ok, fail int, latency time.Duration) {
	g.mu.Lock()
	g.ok, g.fail, g.latency = ok, fail, latency
	g.mu.Unlock()
}

func (g *feedingGatherer) Gather() ([]*dto.MetricFamily, error) {
	g.mu.Lock()
	for range g.ok {
		g.requests.WithLabelValues("fraud", "fraud-00002", "200").Inc()
		g.duration.WithLabelValues("fraud", "fraud-00002").Observe(g.latency.Seconds())
	}
	for range g.fail {
		g.requests.WithLabelValues("fraud", "fraud-00002", "503").Inc()
		g.duration.WithLabelValues("fraud", "fraud-00002").Observe(g.latency.Seconds())
	}
	g.mu.Unlock()
	return g.reg.Gather()
}

// fakeShadow compares perSample answers per Totals call, agreeing at rate agreement.
type fakeShadow struct {
	mu        sync.Mutex
	perSample float64
	agreement float64
	delta     float64
	totals    ShadowTotals
	mirrors   []string
}

func (s *fakeShadow) Mirror(function, from, to string, percent int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mirrors = append(s.mirrors, from+"->"+to)
}

func (s *fakeShadow) StopMirror(function string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mirrors = append(s.mirrors, "stop")
}

func (s *fakeShadow) Totals(function, revision string) ShadowTotals {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.totals.Compared += s.perSample
	s.totals.Agreed += s.perSample * s.agreement
	s.totals.DeltaSum += s.perSample * s.delta
	return s.totals
}

// fakeScaler has ready instances per revision; Hold makes them ready.
type fakeScaler struct {
	mu    sync.Mutex
	ready map[string]int
	holds []string
}

func (s *fakeScaler) ReadyInstances(function, revision string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ready[revision]
}

func (s *fakeScaler) Hold(function, revision string, n int, until time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.holds = append(s.holds, revision+":"+strings.Repeat("|", n))
	s.ready[revision] = max(s.ready[revision], n)
	return nil
}

func fraudFn() *functions.Manifest {
	return &functions.Manifest{Name: "fraud", Flag: "fraud-revision", Revisions: []functions.Revision{{Name: "fraud-00001", Tag: "stable"}, {Name: "fraud-00002"}}}
}

type rig struct {
	c      *Controller
	path   string
	g      *feedingGatherer
	shadow *fakeShadow
	scaler *fakeScaler
	reg    *prometheus.Registry
}

func newRig(t *testing.T) *rig {
	t.Helper()
	r := &rig{path: writeFlags(t, flagsDoc), g: newFeeding(), shadow: &fakeShadow{perSample: 50, agreement: 1},
		scaler: &fakeScaler{ready: map[string]int{"fraud-00001": 3}}, reg: prometheus.NewRegistry()}
	r.c = New(Config{FlagsPath: r.path, Functions: []*functions.Manifest{fraudFn()}, Gatherer: r.g, Registerer: r.reg,
		Logger: slog.New(slog.DiscardHandler), Shadow: r.shadow, Scaler: r.scaler})
	t.Cleanup(r.c.Close)
	return r
}

// wait blocks until the rollout leaves the running state (bounded).
func (r *rig) wait(t *testing.T) Status {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if st, _ := r.c.Status("fraud"); st.State != StateRunning {
			return st
		}
		time.Sleep(10 * time.Millisecond)
	}
	st, _ := r.c.Status("fraud")
	t.Fatalf("rollout still running: %+v", st)
	return st
}

func (r *rig) decided(verdict, check string) float64 {
	return testutil.ToFloat64(r.c.decisions.WithLabelValues("fraud", "fraud-00002", verdict, check))
}

func (r *rig) serving(t *testing.T) (defaultVariant string, targeted bool) {
	t.Helper()
	f := flagOf(t, r.path)
	tg, _ := f["targeting"].(map[string]any)
	return f["defaultVariant"].(string), len(tg) > 0
}

func canarySpec() Spec {
	return Spec{Function: "fraud", To: "fraud-00002", Steps: []int{50, 100}, Interval: minInterval, MinRequests: 10, MaxP99: 200 * time.Millisecond}
}

func TestValidateRefusesBadSpecs(t *testing.T) {
	r := newRig(t)
	bare := New(Config{FlagsPath: r.path, Functions: []*functions.Manifest{fraudFn()}}) // no shadow machinery
	noDefault := New(Config{FlagsPath: writeFlags(t, `{"flags": {"fraud-revision": {"state": "ENABLED", "variants": {"stable": "fraud-00001"}, "defaultVariant": null}}}`),
		Functions: []*functions.Manifest{fraudFn()}})
	with := func(f func(*Spec)) Spec { s := canarySpec(); f(&s); return s }
	tests := []struct {
		name string
		c    *Controller
		spec Spec
		msg  string
	}{
		{"unknown function", r.c, with(func(s *Spec) { s.Function = "nope" }), `unknown function "nope"`},
		{"unknown revision", r.c, with(func(s *Spec) { s.To = "fraud-00009" }), `no revision "fraud-00009"`},
		{"steps not increasing", r.c, with(func(s *Spec) { s.Steps = []int{50, 25} }), "steps must increase"},
		{"step above 100", r.c, with(func(s *Spec) { s.Steps = []int{50, 150} }), "steps[1] = 150"},
		{"interval too short", r.c, with(func(s *Spec) { s.Interval = time.Millisecond }), "too short to judge"},
		{"error rate above 1", r.c, with(func(s *Spec) { s.MaxErrorRate = 1.5 }), "must be in [0, 1]"},
		{"negative p99", r.c, with(func(s *Spec) { s.MaxP99 = -time.Second }), "must be positive"},
		{"negative min requests", r.c, with(func(s *Spec) { s.MinRequests = -1 }), "min requests -1"},
		{"unknown strategy", r.c, with(func(s *Spec) { s.Strategy = "yolo" }), `strategy "yolo"`},
		{"shadow above 100", r.c, with(func(s *Spec) { s.Shadow = 101 }), "shadow 101%"},
		{"agreement above 1", r.c, with(func(s *Spec) { s.MinAgreement = 2 }), "min agreement 2"},
		{"negative score delta", r.c, with(func(s *Spec) { s.MaxScoreDelta = -0.1 }), "max score delta"},
		{"negative keep previous", r.c, with(func(s *Spec) { s.KeepPrevious = -time.Second }), "keep previous"},
		{"gates without shadow machinery", bare, with(func(s *Spec) { s.MinAgreement = 0.9 }), "shadow machinery"},
		{"no defaultVariant naming the stable revision", noDefault, canarySpec(), "no defaultVariant"},
		{"already serving the revision", r.c, with(func(s *Spec) { s.To = "fraud-00001" }), "nothing to roll out"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := readFile(r.path)
			_, err := tt.c.Start(tt.spec)
			var se *SpecError
			if !errors.As(err, &se) || !strings.Contains(se.Msg, tt.msg) {
				t.Fatalf("Start = %v, want a SpecError saying %q", err, tt.msg)
			}
			if after, _ := readFile(r.path); after != before {
				t.Error("a refused spec changed the flag file")
			}
		})
	}
	// A second rollout of the same function while one runs: ErrRunning.
	r.g.set(0, 0, 0)
	s := canarySpec()
	s.Interval = time.Hour
	if _, err := r.c.Start(s); err != nil {
		t.Fatal(err)
	}
	if _, err := r.c.Start(s); !errors.Is(err, ErrRunning) {
		t.Errorf("second start = %v, want ErrRunning", err)
	}
}

func TestAbortRoutesBackToStable(t *testing.T) {
	r := newRig(t)
	s := canarySpec()
	s.Interval = time.Hour // abort arrives mid-interval
	if _, err := r.c.Start(s); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for st, _ := r.c.Status("fraud"); st.Weight != 50 && time.Now().Before(deadline); st, _ = r.c.Status("fraud") {
		time.Sleep(5 * time.Millisecond)
	}
	if _, targeted := r.serving(t); !targeted {
		t.Fatal("the first step did not write a split")
	}
	st, err := r.c.Abort("fraud")
	if err != nil {
		t.Fatal(err)
	}
	if st.State != StateAborted || st.Decisions[len(st.Decisions)-1].Verdict != VerdictAbort {
		t.Fatalf("after abort: %+v", st)
	}
	if def, targeted := r.serving(t); def != "stable" || targeted {
		t.Errorf("flag after abort: default %s, targeted %v; want stable only", def, targeted)
	}
	if r.decided(VerdictAbort, CheckRequest) != 1 {
		t.Error("abort not counted")
	}
	if _, err := r.c.Abort("nope"); !errors.As(err, new(*NotFoundError)) {
		t.Errorf("abort of an unknown rollout: %v", err)
	}
}

func TestRollbackOnP99(t *testing.T) {
	r := newRig(t)
	r.g.set(40, 0, 2*time.Second) // no errors, every request slow
	if _, err := r.c.Start(canarySpec()); err != nil {
		t.Fatal(err)
	}
	st := r.wait(t)
	last := st.Decisions[len(st.Decisions)-1]
	if st.State != StateRolledBack || last.Check != CheckP99 || !strings.Contains(last.Reason, "exceeds 200 ms") {
		t.Fatalf("want a p99 rollback, got %s: %+v", st.State, last)
	}
	if def, targeted := r.serving(t); def != "stable" || targeted {
		t.Error("rollback did not restore the stable revision")
	}
	if r.decided(VerdictRollback, CheckP99) != 1 {
		t.Error("p99 rollback not counted")
	}
}

func TestHoldThenRollbackWithoutTraffic(t *testing.T) {
	r := newRig(t)
	r.g.set(2, 0, time.Millisecond) // fewer than MinRequests per interval
	if _, err := r.c.Start(canarySpec()); err != nil {
		t.Fatal(err)
	}
	st := r.wait(t)
	if st.State != StateRolledBack {
		t.Fatalf("state %s, want rolled_back", st.State)
	}
	if len(st.Decisions) != maxHolds {
		t.Fatalf("%d decisions, want %d holds then the rollback: %+v", len(st.Decisions), maxHolds-1, st.Decisions)
	}
	for _, d := range st.Decisions[:maxHolds-1] {
		if d.Verdict != VerdictHold || d.Requests != 2 {
			t.Errorf("want holds on 2 requests: %+v", d)
		}
	}
	if last := st.Decisions[maxHolds-1]; last.Verdict != VerdictRollback || !strings.Contains(last.Reason, "cannot judge") || !strings.Contains(last.Reason, "--min-requests") {
		t.Errorf("last decision %+v", last)
	}
	if r.decided(VerdictHold, CheckTraffic) != maxHolds-1 || r.decided(VerdictRollback, CheckTraffic) != 1 {
		t.Error("holds and rollback not counted")
	}
}

func TestHealthyCanaryIsPromoted(t *testing.T) {
	r := newRig(t)
	r.g.set(40, 0, time.Millisecond)
	if _, err := r.c.Start(canarySpec()); err != nil {
		t.Fatal(err)
	}
	st := r.wait(t)
	if st.State != StatePromoted || len(st.Decisions) != 2 || st.Decisions[0].Verdict != VerdictAdvance || st.Decisions[1].Verdict != VerdictPromote {
		t.Fatalf("%s %+v", st.State, st.Decisions)
	}
	if def, targeted := r.serving(t); def != "canary" || targeted {
		t.Error("promotion did not make the canary the only answer")
	}
	if _, err := r.c.Undo("fraud"); !errors.As(err, new(*ConflictError)) {
		t.Errorf("undo of a canary without --keep-previous: %v, want a conflict", err)
	}
}

// A candidate whose HTTP metrics are perfect but whose decisions disagree
// is rolled back by the gates, on shadow traffic and during canary steps.
func TestGatesRollBackADisagreeingCandidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		shadow int
		phase  string
	}{{"shadow phase", 20, PhaseShadow}, {"canary step", 0, PhaseCanary}} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			r.g.set(40, 0, time.Millisecond) // perfect HTTP
			r.shadow.agreement, r.shadow.delta = 0.1, 0.8
			s := canarySpec()
			s.Shadow, s.MinAgreement, s.MaxScoreDelta = tc.shadow, 0.95, 0.05
			if _, err := r.c.Start(s); err != nil {
				t.Fatal(err)
			}
			st := r.wait(t)
			last := st.Decisions[len(st.Decisions)-1]
			if st.State != StateRolledBack || last.Check != CheckAgreement || last.Phase != tc.phase {
				t.Fatalf("want a rollback on agreement in the %s phase: %s %+v", tc.phase, st.State, last)
			}
			if last.Agreement > 0.11 || last.Compared != 50 || last.ErrorRate != 0 || !strings.Contains(last.Reason, "below 0.9500") {
				t.Errorf("numbers in the decision: %+v", last)
			}
			if r.decided(VerdictRollback, CheckAgreement) != 1 {
				t.Error("not counted in pilotlight_rollout_decisions_total")
			}
			if def, targeted := r.serving(t); def != "stable" || targeted {
				t.Error("the stable revision does not serve after the rollback")
			}
			r.c.Close() // drive has returned: its deferred StopMirror ran
			r.shadow.mu.Lock()
			defer r.shadow.mu.Unlock()
			if r.shadow.mirrors[0] != "fraud-00001->fraud-00002" || r.shadow.mirrors[len(r.shadow.mirrors)-1] != "stop" {
				t.Errorf("mirroring %v", r.shadow.mirrors)
			}
		})
	}
	// The score gate alone.
	r := newRig(t)
	r.g.set(40, 0, time.Millisecond)
	r.shadow.agreement, r.shadow.delta = 1, 0.2
	s := canarySpec()
	s.Shadow, s.MaxScoreDelta = 10, 0.05
	r.c.Start(s)
	if last := r.wait(t).Decisions; last[len(last)-1].Check != CheckScoreDelta {
		t.Errorf("want a score-delta rollback: %+v", last)
	}
}

func TestBlueGreenPrescalesSwitchesOnceAndUndoes(t *testing.T) {
	r := newRig(t)
	s := Spec{Function: "fraud", To: "fraud-00002", Strategy: StrategyBlueGreen, Shadow: 50, Interval: minInterval, MinRequests: 10, MinAgreement: 0.9}
	if _, err := r.c.Start(s); err != nil {
		t.Fatal(err)
	}
	st := r.wait(t)
	if st.State != StatePromoted || st.Spec.KeepPrevious != DefaultKeepPrevious || st.KeptUntil.IsZero() {
		t.Fatalf("%s keep %s until %s: %+v", st.State, st.Spec.KeepPrevious, st.KeptUntil, st.Decisions)
	}
	// Pre-scaled to the serving revision's 3 ready instances; the previous one held warm.
	r.scaler.mu.Lock()
	defer r.scaler.mu.Unlock()
	if want := []string{"fraud-00002:|||", "fraud-00001:|||"}; strings.Join(r.scaler.holds, " ") != strings.Join(want, " ") {
		t.Errorf("holds %v, want %v", r.scaler.holds, want)
	}
	// No canary steps: the flag went from the original split to static canary in one write.
	for _, d := range st.Decisions {
		if d.Phase == PhaseCanary {
			t.Errorf("a canary step in blue-green: %+v", d)
		}
	}
	if def, targeted := r.serving(t); def != "canary" || targeted {
		t.Fatal("not switched to the candidate")
	}
	st, err := r.c.Undo("fraud")
	if err != nil {
		t.Fatal(err)
	}
	if st.State != StateUndone || st.Decisions[len(st.Decisions)-1].Verdict != VerdictUndo {
		t.Fatalf("after undo %+v", st)
	}
	if def, targeted := r.serving(t); def != "stable" || targeted {
		t.Fatal("undo did not switch back")
	}
	if _, err := r.c.Undo("fraud"); !errors.As(err, new(*ConflictError)) {
		t.Errorf("second undo: %v, want a conflict", err)
	}
	if r.decided(VerdictUndo, CheckRequest) != 1 || r.decided(VerdictPromote, CheckHealthy) != 1 {
		t.Error("promotion and undo not counted")
	}
}

func TestSpecJSONRoundTripAndStrictness(t *testing.T) {
	in := Spec{Function: "fraud", To: "fraud-00002", Strategy: StrategyBlueGreen, Steps: []int{100}, Interval: 5 * time.Second,
		MaxErrorRate: 0.02, MaxP99: 50 * time.Millisecond, MinRequests: 7, Shadow: 20, MinAgreement: 0.95, MaxScoreDelta: 0.05, KeepPrevious: 10 * time.Minute}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"interval":"5s"`) || !strings.Contains(string(b), `"keep_previous":"10m0s"`) {
		t.Errorf("durations not strings: %s", b)
	}
	var out Spec
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("the CLI cannot read what the server writes: %v", err)
	}
	if out.Interval != in.Interval || out.KeepPrevious != in.KeepPrevious || out.MinAgreement != in.MinAgreement || out.Strategy != in.Strategy {
		t.Errorf("round trip %+v != %+v", out, in)
	}
	if err := json.Unmarshal([]byte(`{"function": "fraud", "intervall": "5s"}`), &out); err == nil {
		t.Error("a misspelt field was accepted")
	}
	if err := json.Unmarshal([]byte(`{"interval": "5 parsecs"}`), &out); err == nil || !strings.Contains(err.Error(), "not a duration") {
		t.Errorf("bad duration: %v", err)
	}
	if err := json.Unmarshal([]byte(`{"interval": 5000000000}`), &out); err != nil || out.Interval != 5*time.Second {
		t.Errorf("nanoseconds from older clients: %v %s", err, out.Interval)
	}
}

func readFile(p string) (string, error) {
	b, err := os.ReadFile(p)
	return string(b), err
}
