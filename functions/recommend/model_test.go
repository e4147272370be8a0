package recommend_test

import (
	"cmp"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/pilotlight/pilotlight/functions/functionstest"
	"github.com/pilotlight/pilotlight/functions/recommend"
	"github.com/pilotlight/pilotlight/functions/tensor"
	"github.com/pilotlight/pilotlight/runtime/ort"
)

var modelPath = filepath.Join("models", recommend.Revision+".onnx")

func session(t *testing.T) *ort.Session {
	t.Helper()
	s, err := ort.NewSession(modelPath, ort.Options{Provider: ort.ProviderCPU, IntraOpThreads: 1})
	if err != nil {
		t.Fatalf("load model: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestRecallBeatsPopularity ranks every user's unseen items with the
// committed model in ONNX Runtime (training items masked out through
// candidate_mask) and compares recall@10 on held-out interactions with the
// popularity baseline.
func TestRecallBeatsPopularity(t *testing.T) {
	d := recommend.Generate(recommend.DataSeed)
	uids := make([]int64, recommend.NumUsers)
	mask := make([]float32, recommend.NumUsers*recommend.NumItems)
	for u := range uids {
		uids[u] = int64(u)
		for _, it := range d.Train[u] {
			mask[u*recommend.NumItems+it] = recommend.MaskExcluded
		}
	}
	out, err := session(t).Run([]*tensor.Tensor{
		{Name: "user_id", Datatype: tensor.INT64, Shape: []int64{recommend.NumUsers}, Data: uids},
		{Name: "candidate_mask", Datatype: tensor.FP32, Shape: []int64{recommend.NumUsers, recommend.NumItems}, Data: mask},
	})
	if err != nil {
		t.Fatal(err)
	}
	items := out["items"]
	if items == nil || !slices.Equal(items.Shape, []int64{recommend.NumUsers, recommend.MaxK}) {
		t.Fatalf("items output %v, want [%d %d]", items, recommend.NumUsers, recommend.MaxK)
	}
	ids := items.Data.([]int64)
	top := make([][]int, recommend.NumUsers)
	for u := range top {
		for _, id := range ids[u*recommend.MaxK : u*recommend.MaxK+10] {
			top[u] = append(top[u], int(id))
		}
	}
	recall := d.RecallAt(10, top)
	pop := d.RecallAt(10, d.PopularityTopK(10))
	t.Logf("holdout recall@10 (ONNX Runtime) = %.4f, popularity baseline = %.4f (%.2fx)", recall, pop, recall/pop)
	if recall < 1.5*pop {
		t.Errorf("recall@10 %.4f is not >= 1.5x the popularity baseline %.4f", recall, pop)
	}
	// Scores are sorted descending and no masked item made the top 10.
	scores := out["scores"].Data.([]float32)
	for u := range recommend.NumUsers {
		row := scores[u*recommend.MaxK : (u+1)*recommend.MaxK]
		if !slices.IsSortedFunc(row, func(a, b float32) int { return cmp.Compare(b, a) }) || row[9] < -1e8 {
			t.Fatalf("user %d: scores %v not sorted or masked item in top 10", u, row[:10])
		}
	}
}

func TestModelSignature(t *testing.T) {
	in, out, err := ort.Describe(modelPath)
	if err != nil {
		t.Fatal(err)
	}
	type sig struct {
		dt    tensor.Datatype
		shape []int64
	}
	got := map[string]sig{}
	for _, io := range append(in, out...) {
		got[io.Name] = sig{io.Datatype, io.Shape}
	}
	want := map[string]sig{
		"user_id":        {tensor.INT64, []int64{-1}},
		"candidate_mask": {tensor.FP32, []int64{-1, recommend.NumItems}},
		"scores":         {tensor.FP32, []int64{-1, recommend.MaxK}},
		"items":          {tensor.INT64, []int64{-1, recommend.MaxK}},
	}
	for name, w := range want {
		g, ok := got[name]
		if !ok || g.dt != w.dt || !slices.Equal(g.shape, w.shape) {
			t.Errorf("%s: %v %v, want %v %v", name, g.dt, g.shape, w.dt, w.shape)
		}
	}
	if len(in) != 2 || len(out) != 2 {
		t.Errorf("%d inputs, %d outputs, want 2 and 2", len(in), len(out))
	}
	if fi, err := os.Stat(modelPath); err != nil || fi.Size() > 2<<20 {
		t.Errorf("model size: %v %v, want under 2 MiB", fi.Size(), err)
	}
}

func TestReexportReproducesCommittedModel(t *testing.T) {
	functionstest.Reexport(t, "recommend", recommend.Train, "models", []string{recommend.Revision}, "holdout_recall@10")
}

func TestTrainHonoursCancellation(t *testing.T) {
	functionstest.TrainHonoursCancellation(t, recommend.Train)
}

func TestManifest(t *testing.T) {
	m := functionstest.LoadManifest(t, ".")
	if m.Name != "recommend" || m.Handler != recommend.HandlerName || len(m.Revisions) != 1 || m.Revisions[0].Name != recommend.Revision {
		t.Fatalf("manifest %+v", m)
	}
}

// TestEndToEnd decodes requests, runs the model and encodes the responses.
func TestEndToEnd(t *testing.T) {
	s := session(t)
	for _, tc := range []struct {
		body  string
		want  int
		among []int64
	}{
		{`{"user_id": 42}`, 10, nil},
		{`{"user_id": 42, "k": 100}`, 100, nil},
		{`{"user_id": 7, "k": 5, "candidates": [3, 1400, 3, 77]}`, 3, []int64{3, 1400, 77}},
		{`{"user_id": 7, "k": 2, "candidates": [3, 1400, 77, 900, 12]}`, 2, []int64{3, 1400, 77, 900, 12}},
	} {
		r := functionstest.Invoke(t, recommend.Handler{}, s, tc.body).(recommend.Response)
		if len(r.Items) != tc.want {
			t.Fatalf("%s: %d items, want %d: %+v", tc.body, len(r.Items), tc.want, r)
		}
		seen := map[int64]bool{}
		for i, it := range r.Items {
			if seen[it.ItemID] || (tc.among != nil && !slices.Contains(tc.among, it.ItemID)) || (i > 0 && it.Score > r.Items[i-1].Score) {
				t.Fatalf("%s: bad item list %+v", tc.body, r.Items)
			}
			seen[it.ItemID] = true
		}
	}
}
