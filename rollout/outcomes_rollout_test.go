package rollout_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/flags"
	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/functions/fraud"
	"github.com/pilotlight/pilotlight/internal/testbin"
	"github.com/pilotlight/pilotlight/rollout"
	"github.com/pilotlight/pilotlight/router"
	"github.com/pilotlight/pilotlight/router/auth"
)

// isFraud is the ground truth of transaction i: one in ten is fraud.
func isFraud(i int) bool {
	h := fnv.New32a()
	fmt.Fprint(h, i)
	return h.Sum32()%10 == 0
}

// model answers like the fraud function, from a probability rule over
// the transaction's number (its card_id "c-<i>").
func model(t *testing.T, prob func(i int) float64) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var tx struct {
			CardID string `json:"card_id"`
		}
		_ = json.NewDecoder(r.Body).Decode(&tx)
		var i int
		fmt.Sscanf(tx.CardID, "c-%d", &i)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"card_id": %q, "fraud_probability": %g, "decision": "approve", "top_features": []}`, tx.CardID, prob(i))
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// good knows fraud when it sees it. sloppy gives the same answer on most
// transactions, but misses half the fraud and flags one legitimate
// transaction in twenty: its decisions agree with good's on about 90%.
func good(i int) float64 {
	if isFraud(i) {
		return 0.9
	}
	return 0.1
}

func sloppy(i int) float64 {
	switch {
	case isFraud(i) && i%2 == 0:
		return 0.2
	case !isFraud(i) && i%20 == 1:
		return 0.7
	}
	return good(i)
}

const fraudFlags = `{"flags": {"fraud-revision": {"state": "ENABLED",
  "variants": {"stable": "fraud-00001", "canary": "fraud-00002"}, "defaultVariant": "stable"}}}`

// TestOutcomeGateRollsBackAWorseModelThatAgrees rolls out a candidate
// whose answers mostly agree with the serving model's (an agreement gate
// would pass it) but whose labelled answers are worse: the outcome gates
// roll it back. The same rollout of an equally good candidate promotes,
// so the gate is what decided.
func TestOutcomeGateRollsBackAWorseModelThatAgrees(t *testing.T) {
	agree := 0
	for i := range 1000 {
		a, _ := fraud.Handler{}.CompareJSON(fmt.Appendf(nil, `{"fraud_probability": %g, "decision": %q}`, good(i), decision(good(i))),
			fmt.Appendf(nil, `{"fraud_probability": %g, "decision": %q}`, sloppy(i), decision(sloppy(i))))
		agree += int(a.Agreement)
	}
	if agree < 880 {
		t.Fatalf("the sloppy model agrees on %d of 1000: the test needs one that mostly agrees", agree)
	}
	t.Logf("sloppy agrees with good on %d of 1000 decisions", agree)

	for _, c := range []struct {
		name      string
		candidate func(int) float64
		state     string
		check     string
	}{
		{"worse on labels: rolled back", sloppy, rollout.StateRolledBack, rollout.CheckPrecision},
		{"as good: promoted", good, rollout.StatePromoted, rollout.CheckHealthy},
	} {
		t.Run(c.name, func(t *testing.T) {
			st := runOutcomeRollout(t, c.candidate)
			last := st.Decisions[len(st.Decisions)-1]
			if st.State != c.state || last.Check != c.check {
				t.Fatalf("state %s, check %s (%s); want %s by %s", st.State, last.Check, last.Reason, c.state, c.check)
			}
			if last.Labelled < 30 {
				t.Fatalf("decided on %v labelled outcomes, fewer than min_labelled", last.Labelled)
			}
			t.Logf("%s: %s", st.State, last.Reason)
		})
	}
}

func decision(p float64) string {
	switch {
	case p >= fraud.BlockThreshold:
		return fraud.DecisionBlock
	case p >= fraud.ReviewThreshold:
		return fraud.DecisionReview
	}
	return fraud.DecisionApprove
}

// runOutcomeRollout serves fraud-00001 (good) and fraud-00002
// (candidate) behind a real router with the outcome store, sends
// transactions and posts each one's label as it is answered, and rolls
// fraud-00002 out with outcome gates.
func runOutcomeRollout(t *testing.T, candidate func(int) float64) rollout.Status {
	dir := t.TempDir()
	flagsPath := filepath.Join(dir, "flags.json")
	if err := os.WriteFile(flagsPath, []byte(fraudFlags), 0o644); err != nil {
		t.Fatal(err)
	}
	fn := &functions.Manifest{Name: "fraud", Handler: "fraud", Flag: "fraud-revision",
		Revisions: []functions.Revision{{Name: "fraud-00001", Tag: "stable"}, {Name: "fraud-00002"}},
		Runtime:   functions.Runtime{MaxBodyBytes: 1 << 20},
		Outcomes:  functions.Outcomes{MaxPredictions: 10_000, Window: time.Hour, Threshold: 0.5}}
	fns := []*functions.Manifest{fn}
	reg := prometheus.NewRegistry()
	w, err := flags.NewWatcher(flags.WatcherConfig{Path: flagsPath, Logger: testbin.QuietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	picker, err := router.NewFlagPicker(w, flagsPath, reg)
	if err != nil {
		t.Fatal(err)
	}
	store, err := rollout.NewOutcomes(rollout.OutcomesConfig{Functions: fns, Registerer: reg, Logger: testbin.QuietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	backend := revisionServers{"fraud-00001": model(t, good), "fraud-00002": model(t, candidate)}
	rt, err := router.New(router.Config{Functions: fns, Backend: backend, Picker: picker, Recorder: store, Registry: reg, Logger: testbin.QuietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Close)
	rollout.MountOutcomes(rt, fns, store)
	ts := httptest.NewServer(rt.Handler())
	t.Cleanup(ts.Close)
	ctl := rollout.New(rollout.Config{FlagsPath: flagsPath, Functions: fns, Gatherer: reg, Registerer: reg, Logger: testbin.QuietLogger(),
		Reload: w.ReloadNow, Outcomes: store})
	t.Cleanup(ctl.Close)

	// Traffic with labels: each answered transaction's outcome is posted
	// in batches, by prediction id, as a chargeback feed would.
	stop := labelledTraffic(t, ts.URL, ts.URL, "", func(res rollout.JoinResult) bool { return res.Joined == 50 })
	defer stop()

	if _, err := ctl.Start(rollout.Spec{Function: "fraud", To: "fraud-00002", Steps: []int{50, 100}, Interval: 400 * time.Millisecond,
		MinRequests: 5, MinPrecision: 0.8, MaxLogLossDelta: 0.2, MinLabelled: 30}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if st, _ := ctl.Status("fraud"); st.State != rollout.StateRunning {
			return st
		}
		time.Sleep(50 * time.Millisecond)
	}
	st, _ := ctl.Status("fraud")
	t.Fatalf("rollout still running after 30s: %+v", st)
	return st
}

// labelledTraffic sends transactions to infer (the router serving them)
// and posts each one's label to outcomes (a router replica), in batches of
// 50 by prediction id, as a chargeback feed would, with key when not "";
// ok judges each batch's answer. It runs until stop is called.
func labelledTraffic(t *testing.T, infer, outcomes, key string, ok func(rollout.JoinResult) bool) (stop func()) {
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var batch []rollout.Outcome
		for i := 0; ; i++ {
			select {
			case <-quit:
				return
			default:
			}
			req, _ := http.NewRequest(http.MethodPost, infer+"/functions/fraud", strings.NewReader(fmt.Sprintf(`{"card_id": "c-%d"}`, i)))
			req.Header.Set(router.HeaderRequestID, fmt.Sprintf("req-%d", i))
			if key != "" {
				req.Header.Set("Authorization", "Bearer "+key)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			label := 0.0
			if isFraud(i) {
				label = 1
			}
			batch = append(batch, rollout.Outcome{TrackingEventName: "chargeback", Details: map[string]any{"predictionId": fmt.Sprintf("req-%d", i), "value": label}})
			if len(batch) < 50 {
				continue
			}
			body, _ := json.Marshal(map[string]any{"outcomes": batch})
			req, _ = http.NewRequest(http.MethodPost, outcomes+"/v2/models/fraud/outcomes", bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			if key != "" {
				req.Header.Set("Authorization", "Bearer "+key)
			}
			resp, err = http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var res rollout.JoinResult
			_ = json.Unmarshal(raw, &res)
			if resp.StatusCode != http.StatusOK || !ok(res) {
				t.Errorf("outcomes: %d %s", resp.StatusCode, raw)
				return
			}
			batch = batch[:0]
		}
	}()
	return func() { close(quit); wg.Wait() }
}

// TestOutcomesEndpointRefusesBadRequests: the caller's mistakes are 4xx
// {"error": ...} naming the problem, behind the data path's key rules.
func TestOutcomesEndpointRefusesBadRequests(t *testing.T) {
	rec := &functions.Manifest{Name: "fraud", Handler: "fraud", Revisions: []functions.Revision{{Name: "fraud-00001"}},
		Runtime: functions.Runtime{MaxBodyBytes: 1 << 20}, Outcomes: functions.Outcomes{MaxPredictions: 10, Window: time.Hour, Threshold: 0.5}}
	plain := &functions.Manifest{Name: "plain", Handler: "fraud", Revisions: []functions.Revision{{Name: "plain-00001"}}, Runtime: functions.Runtime{MaxBodyBytes: 1 << 20}}
	fns := []*functions.Manifest{rec, plain}
	store, err := rollout.NewOutcomes(rollout.OutcomesConfig{Functions: fns})
	if err != nil {
		t.Fatal(err)
	}
	keys, all, plainOnly := testKeys(t)
	rt, err := router.New(router.Config{Functions: fns, Backend: revisionServers{}, Recorder: store, Keys: keys, Logger: testbin.QuietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Close)
	rollout.MountOutcomes(rt, fns, store)
	ts := httptest.NewServer(rt.Handler())
	t.Cleanup(ts.Close)
	for _, c := range []struct {
		name, key, path, body string
		status                int
		want                  string
	}{
		{"joined nothing yet", all, "fraud", `{"outcomes": [{"trackingEventName": "chargeback", "details": {"predictionId": "x"}}]}`, 200, ``},
		{"not JSON", all, "fraud", `{"outcomes": [`, 400, `the body must be {"outcomes": [`},
		{"unknown field", all, "fraud", `{"outcomes": [], "label": 1}`, 400, `unknown field "label"`},
		{"no outcomes", all, "fraud", `{}`, 400, `"outcomes" is missing`},
		{"bad outcome", all, "fraud", `{"outcomes": [{"details": {"predictionId": "x"}}]}`, 400, `outcomes[0]: trackingEventName is required`},
		{"a function that records nothing", all, "plain", `{"outcomes": []}`, 404, `function plain records no predictions`},
		{"unknown function", all, "nope", `{"outcomes": []}`, 404, `unknown function "nope"`},
		{"a key that may not call it", plainOnly, "fraud", `{"outcomes": []}`, 403, `may not call function "fraud"`},
		{"no key", "", "fraud", `{"outcomes": []}`, 401, `missing API key`},
	} {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", ts.URL+"/v2/models/"+c.path+"/outcomes", strings.NewReader(c.body))
			if c.key != "" {
				req.Header.Set("Authorization", "Bearer "+c.key)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body map[string]any
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatalf("not JSON: %v", err)
			}
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d: %v", resp.StatusCode, c.status, body)
			}
			if msg, _ := body["error"].(string); c.want != "" && !strings.Contains(msg, c.want) {
				t.Fatalf("error %q, want it to contain %q", msg, c.want)
			}
			if c.status == 200 && body["unknown"] != 1.0 {
				t.Fatalf("answer %v", body)
			}
		})
	}
}

// testKeys are two keys: one for every function, one for "plain" only.
func testKeys(t *testing.T) (keys *auth.Keys, all, plainOnly string) {
	t.Helper()
	all, _ = auth.NewKey()
	plainOnly, _ = auth.NewKey()
	keys, err := auth.Parse([]byte(fmt.Sprintf(`{"keys": [{"id": "all", "hash": %q, "functions": ["*"]},
		{"id": "plain-only", "hash": %q, "functions": ["plain"]}]}`, auth.Sum(all), auth.Sum(plainOnly))), "test")
	if err != nil {
		t.Fatal(err)
	}
	return keys, all, plainOnly
}

// BenchmarkOutcomePost is the join through the HTTP endpoint: batches of
// 1,000 outcomes POSTed to the router's handler (in process, no network),
// JSON decoding included, against a window of 100,000 predictions. Run it
// with -benchtime 100x: one pass over the batches, so every join is a
// first (later passes find duplicates).
func BenchmarkOutcomePost(b *testing.B) {
	const window, batchSize = 100_000, 1000
	fn := &functions.Manifest{Name: "fraud", Handler: "fraud", Revisions: []functions.Revision{{Name: "fraud-00001"}},
		Runtime: functions.Runtime{MaxBodyBytes: 1 << 20}, Outcomes: functions.Outcomes{MaxPredictions: window, Window: time.Hour, Threshold: 0.5}}
	fns := []*functions.Manifest{fn}
	store, err := rollout.NewOutcomes(rollout.OutcomesConfig{Functions: fns})
	if err != nil {
		b.Fatal(err)
	}
	rt, err := router.New(router.Config{Functions: fns, Backend: revisionServers{}, Recorder: store, Logger: testbin.QuietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	defer rt.Close()
	rollout.MountOutcomes(rt, fns, store)
	h := rt.Handler()
	answer := []byte(`{"fraud_probability": 0.7, "decision": "review", "top_features": []}`)
	for i := range window {
		store.Record(router.PredictionCall{Function: "fraud", Revision: "fraud-00001", RequestID: fmt.Sprintf("req-%d", i), Response: answer})
	}
	bodies := make([][]byte, window/batchSize)
	for i := range bodies {
		var batch []rollout.Outcome
		for j := range batchSize {
			batch = append(batch, rollout.Outcome{TrackingEventName: "chargeback", Details: map[string]any{"predictionId": fmt.Sprintf("req-%d", i*batchSize+j), "value": float64(j % 2)}})
		}
		bodies[i], _ = json.Marshal(map[string]any{"outcomes": batch})
	}
	b.SetBytes(int64(len(bodies[0])))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", "/v2/models/fraud/outcomes", bytes.NewReader(bodies[i%len(bodies)])))
		if rec.Code != 200 {
			b.Fatalf("%d %s", rec.Code, rec.Body)
		}
	}
	b.ReportMetric(float64(b.N*batchSize)/b.Elapsed().Seconds(), "outcomes/s")
}
