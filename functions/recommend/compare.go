package recommend

import (
	"encoding/json"
	"fmt"
	"math"

	"github.com/pilotlight/pilotlight/functions"
)

var _ functions.Comparer = Handler{}

// CompareJSON implements functions.Comparer: the overlap of the two top-k
// item lists, |A ∩ B| / k; Delta is 1 - overlap.
func (Handler) CompareJSON(primary, candidate []byte) (functions.Comparison, error) {
	type answer struct {
		Items []struct {
			ItemID int64 `json:"item_id"`
		} `json:"items"`
	}
	var a, b answer
	if err := json.Unmarshal(primary, &a); err != nil {
		return functions.Comparison{}, fmt.Errorf("serving answer: %w", err)
	}
	if err := json.Unmarshal(candidate, &b); err != nil {
		return functions.Comparison{}, fmt.Errorf("candidate answer: %w", err)
	}
	ids := func(x answer) []int64 {
		out := make([]int64, len(x.Items))
		for i, it := range x.Items {
			out[i] = it.ItemID
		}
		return out
	}
	return overlap(ids(a), ids(b)), nil
}

// CompareOutputs implements functions.Comparer for V2 answers: the overlap
// of the first DefaultK items of the "items" outputs (the model ranks more
// than a function answer returns; the head is what users see).
func (Handler) CompareOutputs(primary, candidate []functions.Output) (functions.Comparison, error) {
	a, err := functions.OutputNamed(primary, "items")
	if err != nil {
		return functions.Comparison{}, fmt.Errorf("serving answer: %w", err)
	}
	b, err := functions.OutputNamed(candidate, "items")
	if err != nil {
		return functions.Comparison{}, fmt.Errorf("candidate answer: %w", err)
	}
	ids := func(o functions.Output) []int64 {
		out := make([]int64, min(len(o.Data), DefaultK))
		for i, v := range o.Data[:len(out)] {
			out[i] = int64(math.Round(v))
		}
		return out
	}
	return overlap(ids(a), ids(b)), nil
}

func overlap(a, b []int64) functions.Comparison {
	k := max(len(a), len(b))
	if k == 0 {
		return functions.Comparison{Agreement: 1}
	}
	in := make(map[int64]bool, len(a))
	for _, id := range a {
		in[id] = true
	}
	common := 0
	for _, id := range b {
		if in[id] {
			common++
			delete(in, id)
		}
	}
	o := float64(common) / float64(k)
	return functions.Comparison{Agreement: o, Delta: 1 - o}
}
