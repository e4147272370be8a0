package recommend

import (
	"slices"
	"testing"

	"github.com/pilotlight/pilotlight/functions"
)

func TestPredictReadsRankings(t *testing.T) {
	p, err := Handler{}.PredictJSON([]byte(`{"user_id": 3, "items": [{"item_id": 7, "score": 2}, {"item_id": 1, "score": 1}]}`))
	if err != nil || len(p) != 1 || !slices.Equal(p[0].Items, []int64{7, 1}) {
		t.Fatalf("PredictJSON = %+v, %v", p, err)
	}
	// Two users, three ranked items each.
	p, err = Handler{}.PredictOutputs([]functions.Output{{Name: "items", Shape: []int64{2, 3}, Data: []float64{4, 5, 6, 9, 8, 7}}})
	if err != nil || len(p) != 2 || !slices.Equal(p[1].Items, []int64{9, 8, 7}) {
		t.Fatalf("PredictOutputs = %+v, %v", p, err)
	}
	for _, bad := range []string{`{"items": [{"score": 1}]}`, `{"user_id": 1}`, `[]`} {
		if _, err := (Handler{}).PredictJSON([]byte(bad)); err == nil {
			t.Errorf("PredictJSON(%s) read it", bad)
		}
	}
	if _, err := (Handler{}).PredictOutputs([]functions.Output{{Name: "items", Shape: []int64{2, 3}, Data: []float64{1, 2}}}); err == nil {
		t.Error("an items output that does not match its shape was read")
	}
}
