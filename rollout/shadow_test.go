package rollout_test

import (
	"cmp"
	"context"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/testbin"
	"github.com/pilotlight/pilotlight/rollout"
	"github.com/pilotlight/pilotlight/router"
)

// revisionServers is a Backend over one HTTP server per revision: a
// stand-in for instances, so the shadow path is tested without child
// processes (TestGatesRollBackAnInvertedFraudModel runs real ones).
type revisionServers map[string]string

func (b revisionServers) Acquire(_ context.Context, function, revision string) (router.Target, error) {
	return router.Target{BaseURL: b[revision], Release: func(bool) {}}, nil
}

const (
	servingAnswer   = `{"results":[{"fraud_probability":0.91,"decision":"block","top_features":[]}]}`
	invertedAnswer  = `{"results":[{"fraud_probability":0.09,"decision":"approve","top_features":[]}]}`
	transactionBody = `{"amount": 420, "avg_amount_30d": 40, "merchant_category": "electronics", "country": "FR", "home_country": "DE", "hour": 3, "device_new": true, "tx_last_24h": 9}`
)

func fraudManifest() *functions.Manifest {
	return &functions.Manifest{Name: "fraud", Handler: "fraud", Flag: "fraud-revision", Runtime: functions.Runtime{MaxBodyBytes: 1 << 20},
		Revisions: []functions.Revision{{Name: "fraud-00001", Tag: "stable"}, {Name: "fraud-00002", Tag: "canary"}}}
}

type answering struct {
	body string // the candidate's answer when not "" (startShadowRig: else invertedAnswer)
	hits atomic.Int64
	seen chan struct{} // gets a value per request when not nil
	gate chan struct{} // blocks each request until closed, when not nil
}

func (a *answering) server(t *testing.T, body string) string {
	t.Helper()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		a.hits.Add(1)
		if a.seen != nil {
			a.seen <- struct{}{}
		}
		if a.gate != nil {
			<-a.gate
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, body)
	}))
	t.Cleanup(ts.Close)
	return ts.URL
}

type shadowRig struct {
	url             string
	shadow          *rollout.Shadower
	reg             *prometheus.Registry
	serving, invert *answering
	client          *http.Client
}

func startShadowRig(t *testing.T, cfg rollout.ShadowConfig, invert *answering) *shadowRig {
	t.Helper()
	r := &shadowRig{reg: prometheus.NewRegistry(), serving: &answering{}, invert: invert, client: &http.Client{}}
	backend := revisionServers{"fraud-00001": r.serving.server(t, servingAnswer), "fraud-00002": invert.server(t, cmp.Or(invert.body, invertedAnswer))}
	fns := []*functions.Manifest{fraudManifest()}
	cfg.Functions, cfg.Backend, cfg.Registerer, cfg.Logger = fns, backend, r.reg, testbin.QuietLogger()
	sh, err := rollout.NewShadower(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sh.Close)
	r.shadow = sh
	rt, err := router.New(router.Config{Functions: fns, Backend: backend, Shadow: sh, Registry: r.reg, Logger: testbin.QuietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(rt.Handler())
	t.Cleanup(ts.Close)
	r.url = ts.URL + "/functions/fraud"
	return r
}

// post sends one transaction and returns the answer and the revision that served it.
func (r *shadowRig) post(t *testing.T) (string, string) {
	t.Helper()
	resp, err := r.client.Post(r.url, "application/json", strings.NewReader(transactionBody))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	return string(b), resp.Header.Get("X-Pilotlight-Revision")
}

func (r *shadowRig) waitCompared(t *testing.T, n float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for r.shadow.Totals("fraud", "fraud-00002").Compared < n {
		if time.Now().After(deadline) {
			t.Fatalf("compared %v of %v copies", r.shadow.Totals("fraud", "fraud-00002").Compared, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Clients get only the serving revision's answers, while every copy is
// sent to the candidate and compared: an inverted candidate agrees on
// nothing and is 0.82 away in probability.
func TestShadowClientsGetOnlyTheServingAnswer(t *testing.T) {
	r := startShadowRig(t, rollout.ShadowConfig{}, &answering{})
	r.shadow.Mirror("fraud", "fraud-00001", "fraud-00002", 100)
	const n = 200 // < the queue: nothing is dropped
	for range n {
		body, rev := r.post(t)
		if body != servingAnswer || rev != "fraud-00001" {
			t.Fatalf("client got %s from %s, want the serving revision's answer", body, rev)
		}
	}
	r.waitCompared(t, n)
	tot := r.shadow.Totals("fraud", "fraud-00002")
	if tot.Agreed != 0 || math.Abs(tot.DeltaSum/tot.Compared-0.82) > 1e-9 || tot.Failed != 0 || tot.Dropped != 0 {
		t.Errorf("totals %+v: want 0 agreement and mean |Δp| 0.82", tot)
	}
	if got := r.invert.hits.Load(); got != n {
		t.Errorf("candidate saw %d copies, want %d", got, n)
	}
	labels := map[string]string{"function": "fraud", "revision": "fraud-00002"}
	if v := testbin.Metric(t, r.reg, "pilotlight_shadow_requests_total", map[string]string{"function": "fraud", "revision": "fraud-00002", "result": "compared"}); v != n {
		t.Errorf("pilotlight_shadow_requests_total{compared} = %v", v)
	}
	if v := testbin.Metric(t, r.reg, "pilotlight_shadow_agreement_ratio", labels); v != 0 || testbin.Series(t, r.reg, "pilotlight_shadow_agreement_ratio", labels) != 1 {
		t.Errorf("pilotlight_shadow_agreement_ratio = %v, want 0", v)
	}
	if v := testbin.Metric(t, r.reg, "pilotlight_shadow_score_delta", labels); v != n {
		t.Errorf("pilotlight_shadow_score_delta count = %v, want %d", v, n)
	}
	// The router's own request metrics count client requests only.
	if n := testbin.Series(t, r.reg, "pilotlight_requests_total", map[string]string{"revision": "fraud-00002"}); n != 0 {
		t.Errorf("shadow copies counted as client requests: %d series", n)
	}
	// Mirroring off: no more copies.
	r.shadow.StopMirror("fraud")
	r.post(t)
	if r.shadow.Mirroring("fraud", "fraud-00001") || r.invert.hits.Load() != n {
		t.Error("still copying after StopMirror")
	}
}

// An answer the comparator cannot read (here a 200 whose body is not a
// fraud answer) is incomparable: counted as such, never as failed, and a
// rollout judging it holds instead of rolling the candidate back.
func TestShadowIncomparableIsNotFailure(t *testing.T) {
	r := startShadowRig(t, rollout.ShadowConfig{}, &answering{body: `{"unexpected": true}`})
	r.shadow.Mirror("fraud", "fraud-00001", "fraud-00002", 100)
	const n = 20
	for range n {
		r.post(t)
	}
	testbin.WaitFor(t, "every copy judged", 10*time.Second, func() bool { return r.shadow.Totals("fraud", "fraud-00002").Incomparable == n })
	if tot := r.shadow.Totals("fraud", "fraud-00002"); tot.Failed != 0 || tot.Compared != 0 {
		t.Errorf("totals %+v: want %d incomparable, none failed or compared", tot, n)
	}
	if v := testbin.Metric(t, r.reg, "pilotlight_shadow_requests_total", map[string]string{"function": "fraud", "revision": "fraud-00002", "result": "incomparable"}); v != n {
		t.Errorf("pilotlight_shadow_requests_total{incomparable} = %v, want %d", v, n)
	}
	spec := rollout.Spec{Function: "fraud", To: "fraud-00002", Strategy: rollout.StrategyBlueGreen, Shadow: 50, MinRequests: 5, MinAgreement: 0.95, MaxErrorRate: 0.01}
	verdict, check, reason := rollout.Judge(spec, rollout.Interval{ShadowIncomparable: n}, true, 0)
	if verdict != rollout.VerdictHold || !strings.Contains(reason, "could not be compared") {
		t.Errorf("judged %s (%s): %s; want hold, saying the copies could not be compared", verdict, check, reason)
	}
}

// A full queue drops the copy and counts it; the client never waits for
// the candidate.
func TestShadowFullQueueDropsAndCounts(t *testing.T) {
	cand := &answering{seen: make(chan struct{}, 16), gate: make(chan struct{})}
	r := startShadowRig(t, rollout.ShadowConfig{QueueSize: 2, Workers: 1}, cand)
	r.shadow.Mirror("fraud", "fraud-00001", "fraud-00002", 100)
	r.post(t)
	<-cand.seen // the one worker is now held inside the candidate
	for range 9 {
		if body, _ := r.post(t); body != servingAnswer { // answered while the candidate hangs
			t.Fatalf("client got %s", body)
		}
	}
	dropped := testbin.Metric(t, r.reg, "pilotlight_shadow_requests_total", map[string]string{"function": "fraud", "revision": "fraud-00002", "result": "dropped"})
	if dropped != 7 || r.shadow.Totals("fraud", "fraud-00002").Dropped != 7 {
		t.Errorf("dropped %v, want 7 (10 copies: 1 in flight, 2 queued)", dropped)
	}
	close(cand.gate)
	r.waitCompared(t, 3)
}

// Shadow samples the mirrored share of the serving revision's answered
// POSTs and nothing else. With the one worker held inside the candidate and
// a queue of one, every further sampled copy is dropped, and drops are
// counted on the caller's goroutine: sampled = dropped + the 1 or 2 held.
func TestShadowSamplesTheServingRevisionOnly(t *testing.T) {
	cand := &answering{seen: make(chan struct{}, 1), gate: make(chan struct{})}
	r := startShadowRig(t, rollout.ShadowConfig{QueueSize: 1, Workers: 1}, cand)
	t.Cleanup(func() { close(cand.gate) })
	r.shadow.Mirror("fraud", "fraud-00001", "fraud-00002", 20)
	call := router.ShadowCall{Function: "fraud", Revision: "fraud-00001", Method: "POST", Path: "/functions/fraud",
		Body: []byte(transactionBody), Status: 200, Response: []byte(servingAnswer)}
	never := []router.ShadowCall{call, call, call, call, call, call}
	never[0].Revision = "fraud-00002"                             // the candidate's own traffic
	never[1].Function = "recommend"                               // another function
	never[2].Status = 503                                         // a failed primary
	never[3].Method = "GET"                                       // metadata
	never[4].Path = "/v2/models/fraud/versions/fraud-00001/infer" // pinned to a version
	never[5].Path = "/v2/models/fraud/ready"
	const n = 5000
	for range n {
		r.shadow.Shadow(context.Background(), call)
		for _, c := range never {
			r.shadow.Shadow(context.Background(), c)
		}
	}
	<-cand.seen
	dropped := r.shadow.Totals("fraud", "fraud-00002").Dropped
	if share := (dropped + 2) / n; math.Abs(share-0.20) > 0.03 {
		t.Errorf("sampled about %.3f of the serving revision's requests, want 0.20", share)
	}
	if !r.shadow.Mirroring("fraud", "fraud-00001") || r.shadow.Mirroring("fraud", "fraud-00002") {
		t.Error("Mirroring disagrees with the target")
	}
}
