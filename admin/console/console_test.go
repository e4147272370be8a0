package console

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/bpf"
	"github.com/pilotlight/pilotlight/engine"
	"github.com/pilotlight/pilotlight/flags"
	"github.com/pilotlight/pilotlight/rollout"
	"github.com/pilotlight/pilotlight/router/auth"
)

// fakeSource is a Source whose state the test sets.
type fakeSource struct{ st State }

func (f *fakeSource) Read() State { return f.st }

func newConsole(t testing.TB, cfg Config) *Console {
	t.Helper()
	if cfg.Source == nil {
		cfg.Source = &fakeSource{}
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func get(t *testing.T, h http.Handler, path, key string) (int, http.Header, string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	body, _ := io.ReadAll(rec.Body)
	return rec.Code, rec.Header(), string(body)
}

func TestStateNeedsAnAdminKeyWhenKeysAreOn(t *testing.T) {
	admin, _ := auth.NewKey()
	client, _ := auth.NewKey()
	keys, err := auth.Parse([]byte(fmt.Sprintf("keys:\n  - id: ops\n    hash: %s\n    admin: true\n  - id: client\n    hash: %s\n    functions: ['*']\n", auth.Sum(admin), auth.Sum(client))), "test")
	if err != nil {
		t.Fatal(err)
	}
	c := newConsole(t, Config{Keys: keys})
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "next", http.StatusTeapot) })
	h := c.Wrap(next)
	for _, tc := range []struct {
		name, path, key string
		code            int
		errorHas        string
	}{
		{"the page holds no data and loads without a key", "/ui/", "", 200, ""},
		{"its script too", "/ui/console.js", "", 200, ""},
		{"no key", "/ui/api/state", "", 401, "missing API key"},
		{"unknown key", "/ui/api/state", "pl_not-a-real-key-but-long-enough-000000000000", 401, "invalid API key"},
		{"a key that is not admin", "/ui/api/state", client, 403, `key "client" is not an admin key`},
		{"an admin key", "/ui/api/state", admin, 200, ""},
		{"an unknown asset", "/ui/nope.js", "", 404, `no console asset "nope.js"`},
		{"other paths go to the router", "/admin/functions", "", http.StatusTeapot, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, hdr, body := get(t, h, tc.path, tc.key)
			if code != tc.code {
				t.Fatalf("%s: %d %s, want %d", tc.path, code, body, tc.code)
			}
			if tc.errorHas != "" {
				var e struct{ Error string }
				if err := json.Unmarshal([]byte(body), &e); err != nil || !strings.Contains(e.Error, tc.errorHas) {
					t.Errorf("body %s: want {\"error\"} containing %q", body, tc.errorHas)
				}
			}
			if code == 401 && hdr.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
			if strings.HasPrefix(tc.path, "/ui/") && code == 200 && !strings.Contains(hdr.Get("Content-Security-Policy"), "default-src 'none'") {
				t.Errorf("no content security policy on %s", tc.path)
			}
		})
	}
	if code, hdr, _ := get(t, h, "/ui", ""); code != http.StatusMovedPermanently || hdr.Get("Location") != "/ui/" {
		t.Errorf("/ui: %d to %q, want a redirect to /ui/", code, hdr.Get("Location"))
	}
}

func TestEngineWaterfall(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms float64) time.Time { return t0.Add(time.Duration(ms * float64(time.Millisecond))) }
	for _, tc := range []struct {
		name    string
		cold    engine.ColdStart
		marks   []string
		bars    []float64
		pending bool
	}{
		{"exec", engine.ColdStart{Source: "exec", Trigger: at(0), Launch: at(1), Launched: at(41), Ready: at(90), FirstResponse: at(92)},
			[]string{markArrival, markExec, markListen, markReady, markFirstResponse}, []float64{1, 40, 49, 2}, false},
		{"pool, waiting for its first response", engine.ColdStart{Source: "pool", Trigger: at(0), Launch: at(0.5), Launched: at(10.5), Ready: at(11)},
			[]string{markArrival, markSpecialise, markSessionsWarm, markReady}, []float64{0.5, 10, 0.5}, true},
		{"started by the autoscaler: no arrival, nothing to wait for", engine.ColdStart{Source: "exec", Trigger: at(3), Launch: at(3), Launched: at(43), Ready: at(90)},
			[]string{markExec, markListen, markReady}, []float64{40, 47}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := engineWaterfall(tc.cold)
			if v.Origin != "engine" || v.Pending != tc.pending {
				t.Errorf("origin %q pending %v", v.Origin, v.Pending)
			}
			var names []string
			for _, m := range v.Marks {
				names = append(names, m.Name)
			}
			if fmt.Sprint(names) != fmt.Sprint(tc.marks) {
				t.Fatalf("marks %v, want %v", names, tc.marks)
			}
			if len(v.Bars) != len(tc.bars) {
				t.Fatalf("%d bars, want %d", len(v.Bars), len(tc.bars))
			}
			start := 0.0
			for i, b := range v.Bars {
				if !near(b.MS, tc.bars[i]) || !near(b.StartMS, start) || b.From != tc.marks[i] || b.To != tc.marks[i+1] {
					t.Errorf("bar %d: %+v, want %s→%s from %.1f lasting %.1f", i, b, tc.marks[i], tc.marks[i+1], start, tc.bars[i])
				}
				start += tc.bars[i]
			}
			if !near(v.TotalMS, start) {
				t.Errorf("total %.2f, want %.2f", v.TotalMS, start)
			}
		})
	}
}

func TestKernelWaterfallFollowsTheTimeline(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ev := func(name string, ms int) bpf.TimelineEvent {
		return bpf.TimelineEvent{Name: name, Time: t0.Add(time.Duration(ms) * time.Millisecond)}
	}
	tl := bpf.Timeline{PID: 7, Source: "exec", Events: []bpf.TimelineEvent{
		ev(bpf.EventExec, 2), ev(bpf.MarkRequestArrival, 0), ev(bpf.EventListen, 30),
		ev(bpf.MarkReady, 80), ev(bpf.EventAccept, 81), ev(bpf.EventFirstWrite, 85)}}
	v := kernelWaterfall(tl)
	want := []string{bpf.MarkRequestArrival, bpf.EventExec, bpf.EventListen, bpf.MarkReady, bpf.EventAccept, bpf.EventFirstWrite}
	var got []string
	for _, m := range v.Marks {
		got = append(got, m.Name)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || v.Origin != "kernel" || v.Pending || !near(v.TotalMS, 85) {
		t.Errorf("marks %v origin %q pending %v total %.1f; want %v, kernel, complete, 85", got, v.Origin, v.Pending, v.TotalMS, want)
	}
	// A warm-pool process listened long before the request: its waterfall starts at the arrival.
	pool := bpf.Timeline{PID: 8, Source: "pool", Events: []bpf.TimelineEvent{
		ev(bpf.EventExec, -3000), ev(bpf.EventListen, -2700), ev(bpf.MarkRequestArrival, 0),
		ev(bpf.MarkSpecialiseStart, 1), ev(bpf.MarkReady, 20), ev(bpf.EventAccept, 21), ev(bpf.EventFirstWrite, 22)}}
	v = kernelWaterfall(pool)
	if len(v.Bars) != 4 || v.Bars[0].From != bpf.MarkRequestArrival || !near(v.TotalMS, 22) {
		t.Errorf("pool waterfall %+v: want 4 bars from the request's arrival, 22 ms in all", v.Bars)
	}
}

func near(a, b float64) bool { return a-b < 1e-6 && b-a < 1e-6 }

// routerMetrics registers the router's request series as the router names them.
func routerMetrics(reg *prometheus.Registry) (*prometheus.CounterVec, *prometheus.HistogramVec) {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{Name: requestsMetric}, []string{"function", "revision", "code"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: durationMetric,
		Buckets: []float64{.001, .01, .1, 1}}, []string{"function", "revision"})
	reg.MustRegister(requests, duration)
	return requests, duration
}

func TestSeriesAddAPointPerStep(t *testing.T) {
	reg := prometheus.NewRegistry()
	requests, duration := routerMetrics(reg)
	src := &fakeSource{st: State{Functions: []Function{{Name: "f", Revisions: []Revision{{Name: "f-1", Weight: 100}}}}}}
	h := newHistory(5 * time.Second)
	t0 := time.Now()
	step := func(at time.Time) RevisionView {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		return h.observe(at, src.Read(), mfs).Functions[0].Revisions[0]
	}
	requests.WithLabelValues("f", "f-1", "200")
	duration.WithLabelValues("f", "f-1")
	step(t0)
	// 10 requests in the step: 9 fast (5 ms), 1 slow (500 ms).
	for i := 0; i < 9; i++ {
		requests.WithLabelValues("f", "f-1", "200").Inc()
		duration.WithLabelValues("f", "f-1").Observe(0.005)
	}
	requests.WithLabelValues("f", "f-1", "503").Inc()
	duration.WithLabelValues("f", "f-1").Observe(0.5)
	if r := step(t0.Add(2 * time.Second)); len(r.Series.RPS) != 0 {
		t.Fatalf("a point before the step ended: %+v", r.Series)
	}
	r := step(t0.Add(5 * time.Second))
	if len(r.Series.RPS) != 1 || !near(r.Series.RPS[0], 2) {
		t.Fatalf("rps %v, want [2] (10 requests in 5 s)", r.Series.RPS)
	}
	// p50 lies in the 1-10 ms bucket, p99 in the 100 ms-1 s one.
	if p := r.Series.P50[0]; p == nil || *p <= 1 || *p > 10 {
		t.Errorf("p50 %v ms, want within (1, 10]", p)
	}
	if p := r.Series.P99[0]; p == nil || *p <= 100 || *p > 1000 {
		t.Errorf("p99 %v ms, want within (100, 1000]", p)
	}
	// A quiet step has a rate of zero and no latency, not the last one again.
	r = step(t0.Add(10 * time.Second))
	if len(r.Series.RPS) != 2 || r.Series.RPS[1] != 0 || r.Series.P50[1] != nil || r.Series.P99[1] != nil {
		t.Errorf("quiet step: rps %v p50 %v p99 %v", r.Series.RPS, r.Series.P50[1], r.Series.P99[1])
	}
	for i := 0; i < 2*seriesPoints; i++ {
		r = step(t0.Add(time.Duration(15+5*i) * time.Second))
	}
	if len(r.Series.RPS) != seriesPoints {
		t.Errorf("%d points kept, want %d", len(r.Series.RPS), seriesPoints)
	}
}

func TestColdStartsKeepTheLatestAndTheirFirstResponse(t *testing.T) {
	h := newHistory(DefaultStep)
	t0 := time.Now()
	var last RevisionView
	observe := func(c *engine.ColdStart, tl map[string]bpf.Timeline) {
		st := &engine.Status{Function: "f", Revision: "f-1", LastCold: c}
		last = h.observe(t0, State{Functions: []Function{{Name: "f", Revisions: []Revision{{Name: "f-1", Engine: st}}}}, Timelines: tl}, nil).Functions[0].Revisions[0]
	}
	observe(nil, nil)
	if len(last.ColdStarts) != 0 || !last.Local {
		t.Fatalf("no cold start yet: %+v", last.ColdStarts)
	}
	cold := func(pid int, at time.Duration) *engine.ColdStart {
		tr := t0.Add(at)
		return &engine.ColdStart{Source: "exec", PID: pid, Trigger: tr, Launch: tr.Add(time.Microsecond), Launched: tr.Add(time.Millisecond), Ready: tr.Add(2 * time.Millisecond)}
	}
	c1 := cold(100, 0)
	observe(c1, nil)
	observe(c1, nil)
	if len(last.ColdStarts) != 1 || !last.ColdStarts[0].Pending {
		t.Fatalf("one pending cold start, got %+v", last.ColdStarts)
	}
	done := *c1
	done.FirstResponse = c1.Ready.Add(time.Millisecond)
	observe(&done, nil)
	if len(last.ColdStarts) != 1 || last.ColdStarts[0].Pending || last.ColdStarts[0].Marks[len(last.ColdStarts[0].Marks)-1].Name != markFirstResponse {
		t.Fatalf("the first response did not reach the waterfall: %+v", last.ColdStarts)
	}
	for i := 1; i <= coldStartsKept+1; i++ {
		observe(cold(100+i, time.Duration(i)*time.Second), nil)
	}
	if len(last.ColdStarts) != coldStartsKept || last.ColdStarts[0].PID != 100+coldStartsKept+1 {
		t.Fatalf("kept %d cold starts, newest pid %d; want %d, newest first", len(last.ColdStarts), last.ColdStarts[0].PID, coldStartsKept)
	}
	// With the probes on, the same process's kernel timeline replaces the engine's marks.
	newest := last.ColdStarts[0].PID
	tl := bpf.Timeline{PID: newest, Source: "exec", Events: []bpf.TimelineEvent{{Name: bpf.EventExec, Time: t0}, {Name: bpf.EventFirstWrite, Time: t0.Add(time.Millisecond)}}}
	observe(cold(newest, time.Duration(coldStartsKept+1)*time.Second), map[string]bpf.Timeline{"f/f-1": tl})
	if last.ColdStarts[0].Origin != "kernel" || last.ColdStarts[1].Origin != "engine" {
		t.Errorf("origins %q, %q: want the kernel's for pid %d only", last.ColdStarts[0].Origin, last.ColdStarts[1].Origin, newest)
	}
}

// TestAgentTimelinesWithoutAnEngine: on the Knative backend (no engine) the
// nodes' agents' timelines are the cold starts, once each, newest first.
func TestAgentTimelinesWithoutAnEngine(t *testing.T) {
	h := newHistory(DefaultStep)
	t0 := time.Now()
	pod := func(pid int, at time.Duration) map[string]bpf.Timeline {
		s := t0.Add(at)
		return map[string]bpf.Timeline{"f/f-1": {PID: pid, Source: "exec", Events: []bpf.TimelineEvent{
			{Name: bpf.EventContainerStart, Time: s}, {Name: bpf.EventExec, Time: s.Add(60 * time.Millisecond)},
			{Name: bpf.EventListen, Time: s.Add(100 * time.Millisecond)}, {Name: bpf.MarkReady, Time: s.Add(500 * time.Millisecond)}}}}
	}
	var last RevisionView
	observe := func(tl map[string]bpf.Timeline) {
		last = h.observe(t0, State{Backend: "knative", Probes: true, Functions: []Function{{Name: "f", Revisions: []Revision{{Name: "f-1"}}}}, Timelines: tl}, nil).Functions[0].Revisions[0]
	}
	observe(pod(7, 0))
	observe(pod(7, 0))
	if len(last.ColdStarts) != 1 || last.ColdStarts[0].Origin != "kernel" || last.ColdStarts[0].Pending || len(last.ColdStarts[0].Bars) != 3 {
		t.Fatalf("want one complete kernel cold start of three bars, got %+v", last.ColdStarts)
	}
	if !last.ColdStarts[0].At.Equal(t0) {
		t.Errorf("at %s, want the container's start %s", last.ColdStarts[0].At, t0)
	}
	observe(pod(7, time.Minute)) // the same pid reused by a later pod
	if len(last.ColdStarts) != 2 || !last.ColdStarts[0].At.Equal(t0.Add(time.Minute)) {
		t.Fatalf("want the later cold start first, got %+v", last.ColdStarts)
	}
}

func TestFinishedRolloutsNewestFirst(t *testing.T) {
	h := newHistory(DefaultStep)
	t0 := time.Now()
	ro := func(fn, state string, at time.Duration) rollout.Status {
		return rollout.Status{Spec: rollout.Spec{Function: fn, Steps: []int{50, 100}}, State: state, Started: t0.Add(at)}
	}
	v := h.observe(t0, State{RolloutsOn: true, Rollouts: []rollout.Status{ro("a", rollout.StateRunning, 0)}}, nil)
	if len(v.Rollouts) != 1 || len(v.Finished) != 0 {
		t.Fatalf("running %d finished %d", len(v.Rollouts), len(v.Finished))
	}
	// The controller keeps one rollout per function; the console remembers the ended ones.
	h.observe(t0, State{RolloutsOn: true, Rollouts: []rollout.Status{ro("a", rollout.StateRolledBack, 0)}}, nil)
	v = h.observe(t0, State{RolloutsOn: true, Rollouts: []rollout.Status{ro("a", rollout.StatePromoted, time.Minute)}}, nil)
	if len(v.Rollouts) != 0 || len(v.Finished) != 2 || v.Finished[0].State != rollout.StatePromoted || v.Finished[1].State != rollout.StateRolledBack {
		t.Fatalf("finished %+v, want promoted then rolled back", v.Finished)
	}
	for i := 0; i < finishedKept+2; i++ {
		v = h.observe(t0, State{RolloutsOn: true, Rollouts: []rollout.Status{ro("b", rollout.StateFailed, time.Duration(i+2)*time.Minute)}}, nil)
	}
	if len(v.Finished) != finishedKept {
		t.Errorf("%d finished kept, want %d", len(v.Finished), finishedKept)
	}
}

func TestLastReloadFollowsTheWatcher(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "flags.json")
	good := `{"flags":{"f-revision":{"state":"ENABLED","variants":{"a":"f-1"},"defaultVariant":"a"}}}`
	if err := os.WriteFile(path, []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	w, err := flags.NewWatcher(flags.WatcherConfig{Path: path, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	c := newConsole(t, Config{Source: Platform{Flags: w, FlagsPath: path}, Gatherer: reg, Tick: time.Hour})
	state := func() FlagsView {
		t.Helper()
		c.sample(time.Now())
		_, _, body := get(t, c, "/ui/api/state", "")
		var v View
		if err := json.Unmarshal([]byte(body), &v); err != nil || v.Flags == nil {
			t.Fatalf("state %s: %v", body, err)
		}
		return *v.Flags
	}
	if f := state(); f.LastReload != flags.ReloadSuccess || !f.LastReloadAt.IsZero() || f.Version != w.Set().Version() || f.Error != "" {
		t.Fatalf("at start: %+v", f)
	}
	// A broken file is rejected by the watcher; the console says why.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = w.Run(ctx) }()
	if err := os.WriteFile(path, []byte(`{"flags":`), 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	f := state()
	for f.LastReload != flags.ReloadError && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // polling the condition: the watcher debounces file events
		f = state()
	}
	if f.LastReload != flags.ReloadError || f.LastReloadAt.IsZero() || !strings.Contains(f.Error, "the last good flags stay in force") || !strings.Contains(f.Error, path) {
		t.Fatalf("after a rejected file: %+v", f)
	}
	if f.Version != w.Set().Version() {
		t.Errorf("version %s, want the last good %s", f.Version, w.Set().Version())
	}
}

func TestEmptyPlatform(t *testing.T) {
	c := newConsole(t, Config{Source: &fakeSource{st: State{Backend: "local"}}})
	_, _, body := get(t, c, "/ui/api/state", "")
	var v View
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatal(err)
	}
	if v.Functions == nil || len(v.Functions) != 0 || v.Flags != nil || v.RolloutsOn || v.Probes || v.Pool == nil {
		t.Errorf("empty platform: %s", body)
	}
}

// BenchmarkSample is one tick of the console: read, gather, fold into the
// history, encode. Compare the sizes side by side in one run.
func BenchmarkSample(b *testing.B) {
	for _, n := range []int{3, 50} {
		b.Run(fmt.Sprintf("functions=%d", n), func(b *testing.B) {
			reg := prometheus.NewRegistry()
			requests, duration := routerMetrics(reg)
			src := &fakeSource{st: State{Backend: "local"}}
			for i := 0; i < n; i++ {
				fn := Function{Name: fmt.Sprintf("fn-%02d", i)}
				for _, rev := range []string{"-00001", "-00002"} {
					st := &engine.Status{}
					// Decoded, so the setup does not depend on the name of the instance type.
					if err := json.Unmarshal([]byte(`{"instances":[{"pid":1,"state":"ready"}]}`), st); err != nil {
						b.Fatal(err)
					}
					fn.Revisions = append(fn.Revisions, Revision{Name: fn.Name + rev, Weight: 50, Engine: st})
					requests.WithLabelValues(fn.Name, fn.Name+rev, "200").Add(100)
					duration.WithLabelValues(fn.Name, fn.Name+rev).Observe(0.003)
				}
				src.st.Functions = append(src.st.Functions, fn)
			}
			c := newConsole(b, Config{Source: src, Gatherer: reg, Tick: time.Hour, Step: time.Nanosecond})
			// Fill the charts: every revision has a full series.
			now := time.Now()
			for i := 0; i < seriesPoints; i++ {
				now = now.Add(time.Second)
				c.sample(now)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				now = now.Add(time.Second)
				c.sample(now)
			}
			b.StopTimer()
			c.mu.Lock()
			b.ReportMetric(float64(len(c.state)), "state_bytes")
			c.mu.Unlock()
		})
	}
}
