package rollout

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pilotlight/pilotlight/functions"
	_ "github.com/pilotlight/pilotlight/functions/fraud"
	_ "github.com/pilotlight/pilotlight/functions/recommend"
	"github.com/pilotlight/pilotlight/router"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func fraudRecording(max int) *functions.Manifest {
	return &functions.Manifest{Name: "fraud", Handler: "fraud", Revisions: []functions.Revision{{Name: "fraud-00001"}, {Name: "fraud-00002"}},
		Outcomes: functions.Outcomes{MaxPredictions: max, Window: time.Minute, Threshold: 0.5, K: 10}}
}

func newStore(t testing.TB, reg prometheus.Registerer, fns ...*functions.Manifest) (*Outcomes, *fakeClock) {
	t.Helper()
	clock := &fakeClock{time.Unix(1_700_000_000, 0)}
	o, err := NewOutcomes(OutcomesConfig{Functions: fns, Registerer: reg, Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	return o, clock
}

// fraudAnswer is a fraud function answer with probability p.
func fraudAnswer(p float64) []byte {
	return fmt.Appendf(nil, `{"fraud_probability": %g, "decision": "approve", "top_features": []}`, p)
}

func labelOf(id string, value float64) Outcome {
	return Outcome{TrackingEventName: "chargeback", Details: map[string]any{"predictionId": id, "value": value}}
}

// TestOutcomesScoreAFraudRevision joins labels to known predictions and
// checks every number against a hand computation.
func TestOutcomesScoreAFraudRevision(t *testing.T) {
	o, _ := newStore(t, nil, fraudRecording(100))
	// (probability, label): tp 0.9/1, fp 0.7/0, fn 0.2/1, tn 0.1/0.
	cases := []struct {
		p     float64
		label float64
	}{{0.9, 1}, {0.7, 0}, {0.2, 1}, {0.1, 0}}
	var batch []Outcome
	for i, c := range cases {
		id := fmt.Sprintf("req-%d", i)
		o.Record(router.PredictionCall{Function: "fraud", Revision: "fraud-00002", RequestID: id, Response: fraudAnswer(c.p)})
		batch = append(batch, labelOf(id, c.label))
	}
	res, err := o.Join("fraud", batch)
	if err != nil || res != (JoinResult{Received: 4, Joined: 4}) {
		t.Fatalf("Join = %+v, %v", res, err)
	}
	got := o.Totals("fraud", "fraud-00002")
	wantLoss := -(math.Log(0.9) + math.Log(0.3) + math.Log(0.2) + math.Log(0.9))
	if got.Labelled != 4 || got.TP != 1 || got.FP != 1 || got.FN != 1 || got.TN != 1 || math.Abs(got.LogLossSum-wantLoss) > 1e-12 {
		t.Fatalf("totals %+v, want 1/1/1/1 and log loss sum %v", got, wantLoss)
	}
	if got.Precision() != 0.5 || got.Recall() != 0.5 {
		t.Fatalf("precision %v recall %v", got.Precision(), got.Recall())
	}
	if o.Totals("fraud", "fraud-00001") != (OutcomeTotals{}) {
		t.Fatal("another revision got the labels")
	}
}

func TestOutcomesJoinByV2IDAndByTargetingKey(t *testing.T) {
	o, _ := newStore(t, nil, fraudRecording(100))
	v2 := []byte(`{"id": "v2-1", "outputs": [{"name": "probability", "datatype": "FP32", "shape": [2], "data": [0.8, 0.3]}]}`)
	o.Record(router.PredictionCall{Function: "fraud", Revision: "fraud-00001", V2: true, RequestID: "header-id",
		Body: []byte(`{"id": "v2-1", "inputs": []}`), Response: v2})
	o.Record(router.PredictionCall{Function: "fraud", Revision: "fraud-00001", TargetingKey: "card-7", Response: fraudAnswer(0.6)})
	o.Record(router.PredictionCall{Function: "fraud", Revision: "fraud-00002", TargetingKey: "card-7", Response: fraudAnswer(0.95)})
	res, err := o.Join("fraud", []Outcome{
		{TrackingEventName: "chargeback", Details: map[string]any{"predictionId": "v2-1", "index": 1.0, "value": 0.0}}, // row 1: 0.3, legit: tn
		{TrackingEventName: "chargeback", Context: map[string]any{"targetingKey": "card-7"}},                           // latest of card-7, value 1 by default: tp on 00002
		{TrackingEventName: "chargeback", Details: map[string]any{"predictionId": "header-id"}},                        // the V2 id won: unknown
	})
	if err != nil || res != (JoinResult{Received: 3, Joined: 2, Unknown: 1}) {
		t.Fatalf("Join = %+v, %v", res, err)
	}
	if got := o.Totals("fraud", "fraud-00001"); got.TN != 1 || got.Labelled != 1 {
		t.Fatalf("fraud-00001 %+v", got)
	}
	if got := o.Totals("fraud", "fraud-00002"); got.TP != 1 || got.Labelled != 1 {
		t.Fatalf("fraud-00002 %+v", got)
	}
	// The same outcome again: a duplicate, not counted twice.
	res, _ = o.Join("fraud", []Outcome{{TrackingEventName: "chargeback", Context: map[string]any{"targetingKey": "card-7"}}})
	if res.Duplicate != 1 || o.Totals("fraud", "fraud-00002").Labelled != 1 {
		t.Fatalf("duplicate: %+v %+v", res, o.Totals("fraud", "fraud-00002"))
	}
}

func TestOutcomesWindowEvictsOldestAndExpires(t *testing.T) {
	reg := prometheus.NewRegistry()
	o, clock := newStore(t, reg, fraudRecording(3))
	for i := range 5 {
		o.Record(router.PredictionCall{Function: "fraud", Revision: "fraud-00001", RequestID: fmt.Sprint(i), Response: fraudAnswer(0.9)})
		clock.t = clock.t.Add(10 * time.Second)
	}
	// 0 and 1 made room for 3 and 4.
	res, err := o.Join("fraud", []Outcome{labelOf("0", 1), labelOf("1", 1), labelOf("2", 1)})
	if err != nil || res.Joined != 1 || res.Unknown != 2 {
		t.Fatalf("after a full window: %+v %v", res, err)
	}
	// 3 was recorded at +30s, 4 at +40s; at +95s 3 is older than the minute.
	clock.t = time.Unix(1_700_000_000, 0).Add(95 * time.Second)
	res, _ = o.Join("fraud", []Outcome{labelOf("3", 1), labelOf("4", 1)})
	if res.Joined != 1 || res.Unknown != 1 {
		t.Fatalf("after expiry: %+v", res)
	}
	if got := testutil.ToFloat64(collectorWith(t, reg, "pilotlight_predictions_evicted_total", "reason", "full")); got != 2 {
		t.Fatalf("evicted full = %v, want 2", got)
	}
	if got := testutil.ToFloat64(collectorWith(t, reg, "pilotlight_predictions_evicted_total", "reason", "expired")); got != 2 {
		t.Fatalf("evicted expired = %v, want 2 (2 and 3)", got)
	}
}

// collectorWith gathers one series of a metric as a one-metric collector.
func collectorWith(t *testing.T, reg *prometheus.Registry, name, lname, lvalue string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == lname && l.GetValue() == lvalue {
					return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "x"}, func() float64 { return m.GetCounter().GetValue() + m.GetGauge().GetValue() })
				}
			}
		}
	}
	t.Fatalf("no %s{%s=%q}", name, lname, lvalue)
	return nil
}

func TestOutcomesHitRateAtK(t *testing.T) {
	rec := &functions.Manifest{Name: "recommend", Handler: "recommend", Revisions: []functions.Revision{{Name: "recommend-00001"}},
		Outcomes: functions.Outcomes{MaxPredictions: 10, Window: time.Hour, K: 2}}
	o, _ := newStore(t, nil, rec)
	o.Record(router.PredictionCall{Function: "recommend", Revision: "recommend-00001", RequestID: "a", Response: []byte(`{"user_id": 1, "items": [{"item_id": 5, "score": 1}, {"item_id": 9, "score": 0.5}, {"item_id": 2, "score": 0.1}]}`)})
	o.Record(router.PredictionCall{Function: "recommend", Revision: "recommend-00001", RequestID: "b", Response: []byte(`{"user_id": 2, "items": [{"item_id": 5, "score": 1}, {"item_id": 9, "score": 0.5}, {"item_id": 2, "score": 0.1}]}`)})
	click := func(id string, item float64) Outcome {
		return Outcome{TrackingEventName: "click", Details: map[string]any{"predictionId": id, "value": item}}
	}
	if _, err := o.Join("recommend", []Outcome{click("a", 9), click("b", 2)}); err != nil { // 9 is 2nd: a hit; 2 is 3rd: not at k=2
		t.Fatal(err)
	}
	if got := o.Totals("recommend", "recommend-00001"); got.Labelled != 2 || got.Hits != 1 || got.HitRate() != 0.5 {
		t.Fatalf("%+v", got)
	}
	if _, err := o.Join("recommend", []Outcome{{TrackingEventName: "click", Details: map[string]any{"predictionId": "a"}}}); err == nil ||
		!strings.Contains(err.Error(), "details.value must be the item id the user took") {
		t.Fatalf("a click without its item: %v", err)
	}
}

// TestOutcomesRefuseWhatTheyCannotRead: each bad outcome is named, and a
// batch with one is not applied at all.
func TestOutcomesRefuseWhatTheyCannotRead(t *testing.T) {
	o, _ := newStore(t, nil, fraudRecording(10))
	o.Record(router.PredictionCall{Function: "fraud", Revision: "fraud-00001", RequestID: "p", Response: fraudAnswer(0.9)})
	for _, c := range []struct {
		oc   Outcome
		want string
	}{
		{Outcome{Details: map[string]any{"predictionId": "p"}}, "outcomes[1]: trackingEventName is required"},
		{Outcome{TrackingEventName: "chargeback"}, "outcomes[1]: name the prediction: details.predictionId, or context.targetingKey"},
		{Outcome{TrackingEventName: "chargeback", Details: map[string]any{"predictionId": 7.0}}, "details.predictionId must be a non-empty string"},
		{Outcome{TrackingEventName: "chargeback", Context: map[string]any{"targetingKey": true}}, "context.targetingKey must be a string"},
		{Outcome{TrackingEventName: "chargeback", Details: map[string]any{"predictionId": "p", "value": "yes"}}, "details.value must be a number"},
		{Outcome{TrackingEventName: "chargeback", Details: map[string]any{"predictionId": "p", "value": 0.7}}, "details.value 0.7: function fraud scores a probability, its label is 1"},
		{Outcome{TrackingEventName: "chargeback", Details: map[string]any{"predictionId": "p", "index": 1.5}}, "details.index must be a whole number"},
		{Outcome{TrackingEventName: "chargeback", Details: map[string]any{"predictionId": "p", "index": 3.0}}, "details.index 3: the prediction has 1 rows"},
	} {
		_, err := o.Join("fraud", []Outcome{labelOf("p", 1), c.oc})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want %q", c.oc, err, c.want)
		}
	}
	if got := o.Totals("fraud", "fraud-00001"); got.Labelled != 0 {
		t.Fatalf("a refused batch was applied: %+v", got)
	}
	if _, err := o.Join("recommend", nil); err != ErrNotRecorded {
		t.Fatalf("a function that records nothing: %v", err)
	}
}

func TestOutcomesNeedAPredictor(t *testing.T) {
	m := &functions.Manifest{Name: "t", Handler: functions.HandlerTensor, Outcomes: functions.Outcomes{MaxPredictions: 1}}
	if _, err := NewOutcomes(OutcomesConfig{Functions: []*functions.Manifest{m}}); err == nil || !strings.Contains(err.Error(), "cannot say what an answer predicted") {
		t.Fatalf("err = %v", err)
	}
}

// BenchmarkOutcomeJoin measures the join's throughput: outcomes per second
// joined to a full window of 100,000 fraud predictions, in batches of 1,000.
func BenchmarkOutcomeJoin(b *testing.B) {
	const window, batchSize = 100_000, 1000
	o, _ := newStore(b, nil, fraudRecording(window))
	answer := fraudAnswer(0.7)
	for i := range window {
		o.Record(router.PredictionCall{Function: "fraud", Revision: "fraud-00002", RequestID: fmt.Sprintf("req-%d", i), Response: answer})
	}
	batches := make([][]Outcome, window/batchSize)
	for i := range batches {
		for j := range batchSize {
			batches[i] = append(batches[i], labelOf(fmt.Sprintf("req-%d", i*batchSize+j), float64(j%2)))
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	bk := o.books["fraud"]
	for i := 0; i < b.N; i++ {
		if i > 0 && i%len(batches) == 0 { // every prediction has its label: clear them, so each join is a first
			b.StopTimer()
			for _, p := range bk.queue[bk.head:] {
				clear(p.labelled)
			}
			b.StartTimer()
		}
		res, err := o.Join("fraud", batches[i%len(batches)])
		if err != nil || res.Joined != batchSize {
			b.Fatalf("%+v %v", res, err)
		}
	}
	b.ReportMetric(float64(b.N*batchSize)/b.Elapsed().Seconds(), "outcomes/s")
}

// BenchmarkRecord is what recording adds to each answered request of a
// function that records (on the request's goroutine): reading the answer
// and keeping it, in a full window that evicts one per record.
func BenchmarkRecord(b *testing.B) {
	o, _ := newStore(b, nil, fraudRecording(10_000))
	answer := []byte(`{"card_id": "c-1", "fraud_probability": 0.93, "decision": "block", "top_features": [{"feature": "amount_ratio", "contribution": 2.1}, {"feature": "hour", "contribution": 0.7}, {"feature": "device_new", "contribution": 0.5}]}`)
	ids := make([]string, 20_000)
	for i := range ids {
		ids[i] = fmt.Sprintf("req-%d", i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		o.Record(router.PredictionCall{Function: "fraud", Revision: "fraud-00002", RequestID: ids[i%len(ids)], TargetingKey: "c-1", Response: answer})
	}
}
