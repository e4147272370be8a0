package fraud_test

import (
	"math"
	"path/filepath"
	"testing"

	"github.com/pilotlight/pilotlight/functions/fraud"
	"github.com/pilotlight/pilotlight/functions/functionstest"
	"github.com/pilotlight/pilotlight/functions/tensor"
	"github.com/pilotlight/pilotlight/runtime/ort"
)

func session(t *testing.T, revision string) *ort.Session {
	t.Helper()
	s, err := ort.NewSession(filepath.Join("models", revision+".onnx"), ort.Options{Provider: ort.ProviderCPU, IntraOpThreads: 1})
	if err != nil {
		t.Fatalf("load %s: %v", revision, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func holdoutFeatures() (*tensor.Tensor, []bool) {
	ex := fraud.HoldoutSet()
	data := make([]float32, len(ex)*fraud.NumFeatures)
	labels := make([]bool, len(ex))
	for i := range ex {
		fraud.Features(&ex[i].Tx, data[i*fraud.NumFeatures:(i+1)*fraud.NumFeatures])
		labels[i] = ex[i].Fraud
	}
	return &tensor.Tensor{Name: "features", Datatype: tensor.FP32, Shape: []int64{int64(len(ex)), int64(fraud.NumFeatures)}, Data: data}, labels
}

// TestHoldoutAUC runs the committed models through ONNX Runtime on the
// holdout set, which training never saw.
func TestHoldoutAUC(t *testing.T) {
	x, labels := holdoutFeatures()
	for _, rev := range []string{fraud.RevisionLR, fraud.RevisionMLP} {
		t.Run(rev, func(t *testing.T) {
			s := session(t, rev)
			out, err := s.Run([]*tensor.Tensor{x})
			if err != nil {
				t.Fatalf("run: %v", err)
			}
			p := out["probability"]
			if p == nil || len(p.Shape) != 2 || p.Shape[0] != int64(len(labels)) || p.Shape[1] != 1 {
				t.Fatalf("probability output %+v, want [%d 1]", p, len(labels))
			}
			if c := out["contributions"]; c == nil || c.Shape[1] != int64(fraud.NumFeatures) {
				t.Fatalf("contributions output missing or wrong shape")
			}
			scores := make([]float64, len(labels))
			for i, v := range p.Data.([]float32) {
				scores[i] = float64(v)
			}
			auc := fraud.AUC(scores, labels)
			t.Logf("%s holdout ROC-AUC (ONNX Runtime) = %.4f", rev, auc)
			if auc < 0.95 {
				t.Errorf("%s holdout AUC %.4f < 0.95", rev, auc)
			}
		})
	}
}

// TestModelSignature checks what the runtime relies on: a dynamic batch
// dimension first and nothing else dynamic.
func TestModelSignature(t *testing.T) {
	F := int64(fraud.NumFeatures)
	for _, rev := range []string{fraud.RevisionLR, fraud.RevisionMLP} {
		in, out, err := ort.Describe(filepath.Join("models", rev+".onnx"))
		if err != nil {
			t.Fatal(err)
		}
		got := map[string][]int64{}
		for _, io := range append(in, out...) {
			if io.Datatype != tensor.FP32 {
				t.Errorf("%s %s: datatype %s, want FP32", rev, io.Name, io.Datatype)
			}
			got[io.Name] = io.Shape
		}
		want := map[string][]int64{"features": {-1, F}, "probability": {-1, 1}, "contributions": {-1, F}}
		for name, shape := range want {
			if g, ok := got[name]; !ok || len(g) != len(shape) || g[0] != shape[0] || g[1] != shape[1] {
				t.Errorf("%s %s: shape %v, want %v", rev, name, g, shape)
			}
		}
		if len(in) != 1 || len(out) != 2 {
			t.Errorf("%s: %d inputs, %d outputs, want 1 and 2", rev, len(in), len(out))
		}
	}
}

// TestLRContributionsSumToLogit: for logistic regression, contributions are
// w_i*z_i, so logit(p) - sum(contributions) is the bias, the same for every row.
func TestLRContributionsSumToLogit(t *testing.T) {
	x, _ := holdoutFeatures()
	x = x.Rows(0, 200)
	out, err := session(t, fraud.RevisionLR).Run([]*tensor.Tensor{x})
	if err != nil {
		t.Fatal(err)
	}
	p, c := out["probability"].Data.([]float32), out["contributions"].Data.([]float32)
	var first float64
	compared := 0
	for i := range 200 {
		pi := float64(p[i])
		if pi < 1e-5 || pi > 1-1e-5 {
			continue // logit too imprecise at the extremes
		}
		sum := 0.0
		for _, v := range c[i*fraud.NumFeatures : (i+1)*fraud.NumFeatures] {
			sum += float64(v)
		}
		b := math.Log(pi/(1-pi)) - sum
		if compared == 0 {
			first = b // every later row is compared with this one: no drift
		} else if math.Abs(b-first) > 1e-3 {
			t.Fatalf("row %d: logit - sum(contributions) = %.5f, the first compared row %.5f", i, b, first)
		}
		compared++
	}
	if compared < 100 {
		t.Fatalf("only %d of 200 rows had a probability away from 0 and 1; want at least 100 compared", compared)
	}
}

// TestReexportReproducesCommittedModels retrains into a temporary directory
// and compares with the committed files byte for byte.
func TestReexportReproducesCommittedModels(t *testing.T) {
	functionstest.Reexport(t, "fraud", fraud.Train, "models", []string{fraud.RevisionLR, fraud.RevisionMLP}, "holdout_auc")
}

func TestTrainHonoursCancellation(t *testing.T) {
	functionstest.TrainHonoursCancellation(t, fraud.Train)
}

// TestManifest loads function.yaml with its models and builds its handler.
func TestManifest(t *testing.T) {
	m := functionstest.LoadManifest(t, ".")
	if m.Name != "fraud" || m.Handler != fraud.HandlerName || len(m.Revisions) != 2 {
		t.Fatalf("manifest %+v", m)
	}
}

// TestEndToEnd decodes requests, runs both models and encodes the answers.
func TestEndToEnd(t *testing.T) {
	const (
		ordinary = `{"amount": 32.5, "avg_amount_30d": 40, "merchant_category": "grocery", "country": "US", "home_country": "US", "hour": 14, "device_new": false, "tx_last_24h": 1}`
		thief    = `{"card_id": "c-1", "amount": 2400, "avg_amount_30d": 35, "merchant_category": "electronics", "country": "BR", "home_country": "US", "hour": 3, "device_new": true, "tx_last_24h": 14}`
	)
	for _, rev := range []string{fraud.RevisionLR, fraud.RevisionMLP} {
		s := session(t, rev)
		for _, tc := range []struct {
			body, decision string
		}{{ordinary, fraud.DecisionApprove}, {thief, fraud.DecisionBlock}} {
			r := functionstest.Invoke(t, fraud.Handler{}, s, tc.body).(fraud.Result)
			if r.Decision != tc.decision || len(r.TopFeatures) != 3 {
				t.Errorf("%s: %s -> %+v, want decision %s", rev, tc.body, r, tc.decision)
			}
			if tc.decision == fraud.DecisionBlock && r.CardID != "c-1" {
				t.Errorf("%s: card_id not echoed: %+v", rev, r)
			}
		}
	}
}
