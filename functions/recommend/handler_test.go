package recommend_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/pilotlight/pilotlight/functions/functionstest"
	"github.com/pilotlight/pilotlight/functions/recommend"
	"github.com/pilotlight/pilotlight/functions/tensor"
)

func ids(n int) string {
	s := make([]string, n)
	for i := range s {
		s[i] = fmt.Sprint(i % recommend.NumItems)
	}
	return "[" + strings.Join(s, ",") + "]"
}

func TestDecodeValid(t *testing.T) {
	for _, tc := range []struct {
		name    string
		body    string
		user    int64
		allowed []int // nil: every item allowed
	}{
		{"user only", `{"user_id": 42}`, 42, nil},
		{"first user", `{"user_id": 0, "k": 1}`, 0, nil},
		{"last user", fmt.Sprintf(`{"user_id": %d, "k": 100}`, recommend.NumUsers-1), recommend.NumUsers - 1, nil},
		{"null candidates", `{"user_id": 1, "candidates": null}`, 1, nil},
		{"candidates", `{"user_id": 5, "k": 3, "candidates": [9, 0, 1499]}`, 5, []int{0, 9, 1499}},
		{"duplicates count once", `{"user_id": 5, "candidates": [9, 9, 9]}`, 5, []int{9}},
		{"max candidates", `{"user_id": 5, "candidates": ` + ids(recommend.MaxCandidates) + `}`, 5, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inv, err := recommend.Handler{}.Decode([]byte(tc.body))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if inv.Rows != 1 || len(inv.Inputs) != 2 {
				t.Fatalf("rows %d inputs %d", inv.Rows, len(inv.Inputs))
			}
			for _, x := range inv.Inputs {
				if err := x.Validate(); err != nil {
					t.Fatal(err)
				}
			}
			if got := inv.Inputs[0].Data.([]int64); inv.Inputs[0].Name != "user_id" || got[0] != tc.user {
				t.Fatalf("user_id input %+v", inv.Inputs[0])
			}
			mask := inv.Inputs[1].Data.([]float32)
			if inv.Inputs[1].Name != "candidate_mask" || len(mask) != recommend.NumItems {
				t.Fatalf("candidate_mask input %s%v", inv.Inputs[1].Name, inv.Inputs[1].Shape)
			}
			if tc.name == "max candidates" {
				return // ids 0..999: spot-check below is for small lists
			}
			for i, v := range mask {
				want := float32(0)
				if tc.allowed != nil && !slices.Contains(tc.allowed, i) {
					want = recommend.MaskExcluded
				}
				if v != want {
					t.Fatalf("mask[%d] = %v, want %v", i, v, want)
				}
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	for _, tc := range []struct{ name, body, want string }{
		{"empty", ``, "malformed JSON"},
		{"truncated", `{"user_id": 4`, "malformed JSON"},
		{"syntax", `{"user_id": ,}`, "malformed JSON"},
		{"array", `[42]`, "JSON object"},
		{"null", `null`, "JSON object"},
		{"trailing", `{"user_id": 1} 2`, "after the top-level value"},
		{"unknown field", `{"user_id": 1, "limit": 3}`, "limit: unknown field"},
		{"missing user", `{"k": 3}`, "user_id: required"},
		{"null user", `{"user_id": null}`, "user_id: required"},
		{"user string", `{"user_id": "42"}`, "user_id: must be an integer"},
		{"user float", `{"user_id": 4.5}`, "user_id: must be an integer"},
		{"user negative", `{"user_id": -1}`, "user_id: -1 out of range"},
		{"user too big", fmt.Sprintf(`{"user_id": %d}`, recommend.NumUsers), fmt.Sprintf("user_id: %d out of range", recommend.NumUsers)},
		{"user overflow", `{"user_id": 99999999999999999999}`, "user_id: must be an integer"},
		{"k zero", `{"user_id": 1, "k": 0}`, "k: 0 out of range [1, 100]"},
		{"k too big", `{"user_id": 1, "k": 101}`, "k: 101 out of range [1, 100]"},
		{"k string", `{"user_id": 1, "k": "5"}`, "k: must be an integer"},
		{"candidates not array", `{"user_id": 1, "candidates": 5}`, "candidates: must be an array"},
		{"candidate string", `{"user_id": 1, "candidates": [1, "2"]}`, "candidates"},
		{"candidates empty", `{"user_id": 1, "candidates": []}`, "candidates: must not be empty"},
		{"candidate negative", `{"user_id": 1, "candidates": [1, -3]}`, "candidates[1]: item id -3 out of range"},
		{"candidate too big", fmt.Sprintf(`{"user_id": 1, "candidates": [%d]}`, recommend.NumItems), fmt.Sprintf("candidates[0]: item id %d out of range", recommend.NumItems)},
		{"too many candidates", `{"user_id": 1, "candidates": ` + ids(recommend.MaxCandidates+1) + `}`, "candidates: 1001 ids, at most 1000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			functionstest.RejectsBadRequest(t, recommend.Handler{}, tc.body, tc.want)
		})
	}
}

// modelRows fakes the runtime's one output row.
func modelRows(items []int64, scores []float32) map[string]*tensor.Tensor {
	return map[string]*tensor.Tensor{
		"items":  {Name: "items", Datatype: tensor.INT64, Shape: []int64{1, int64(len(items))}, Data: items},
		"scores": {Name: "scores", Datatype: tensor.FP32, Shape: []int64{1, int64(len(scores))}, Data: scores},
	}
}

func topRow(first []int64, firstScores []float32) ([]int64, []float32) {
	items := append([]int64(nil), first...)
	scores := append([]float32(nil), firstScores...)
	for i := int64(0); len(items) < recommend.MaxK; i++ {
		if !slices.Contains(items, 1000+i) {
			items = append(items, 1000+i)
			scores = append(scores, -1e9-float32(i))
		}
	}
	return items, scores
}

func TestEncode(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		items      []int64
		scores     []float32
		want       string
	}{
		{"top 3", `{"user_id": 42, "k": 3}`, []int64{17, 4, 99, 5}, []float32{3.25, 2.5, -0.5, -1},
			`{"user_id":42,"items":[{"item_id":17,"score":3.25},{"item_id":4,"score":2.5},{"item_id":99,"score":-0.5}]}`},
		{"fewer candidates than k", `{"user_id": 1, "k": 10, "candidates": [8, 2, 8]}`, []int64{2, 8}, []float32{1.5, 0.25},
			`{"user_id":1,"items":[{"item_id":2,"score":1.5},{"item_id":8,"score":0.25}]}`},
		{"masked item skipped", `{"user_id": 1, "k": 2, "candidates": [8, 2, 3]}`, []int64{2, 8}, []float32{1.5, 0.25},
			`{"user_id":1,"items":[{"item_id":2,"score":1.5},{"item_id":8,"score":0.25}]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inv, err := recommend.Handler{}.Decode([]byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			items, scores := topRow(tc.items, tc.scores)
			resp, err := inv.Encode(modelRows(items, scores))
			if err != nil {
				t.Fatal(err)
			}
			got, _ := json.Marshal(resp)
			if string(got) != tc.want {
				t.Errorf("\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestEncodeRejectsBadOutputs(t *testing.T) {
	inv, err := recommend.Handler{}.Decode([]byte(`{"user_id": 3, "k": 5}`))
	if err != nil {
		t.Fatal(err)
	}
	items, scores := topRow(nil, nil)
	for name, out := range map[string]map[string]*tensor.Tensor{
		"missing items": {"scores": modelRows(items, scores)["scores"]},
		"too few":       modelRows(items[:3], scores[:3]),
		"wrong type":    {"items": {Name: "items", Datatype: tensor.FP32, Shape: []int64{1, 100}, Data: scores}, "scores": modelRows(items, scores)["scores"]},
		"bad item id":   modelRows(append([]int64{-5}, items[1:]...), scores),
	} {
		if _, err := inv.Encode(out); err == nil {
			t.Errorf("%s: Encode succeeded", name)
		}
	}
}

// FuzzDecode: Decode never panics, rejects only with *functions.BadRequest,
// and whatever it accepts is valid tensors whose row Encode can answer.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"user_id": 42, "k": 10}`))
	f.Add([]byte(`{"user_id": 7, "k": 5, "candidates": [3, 1400, 3, 77]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		inv := functionstest.DecodeOrBadRequest(t, recommend.Handler{}, body)
		if inv == nil {
			return
		}
		if inv.Rows != 1 || len(inv.Inputs) != 2 {
			t.Fatalf("rows %d, inputs %d", inv.Rows, len(inv.Inputs))
		}
		for _, x := range inv.Inputs {
			if err := x.Validate(); err != nil {
				t.Fatal(err)
			}
			if x.Shape[0] != 1 {
				t.Fatalf("%s: shape %v", x.Name, x.Shape)
			}
		}
		uid := inv.Inputs[0].Data.([]int64)[0]
		if uid < 0 || uid >= recommend.NumUsers {
			t.Fatalf("accepted user_id %d", uid)
		}
		// Answer like the model: allowed items first, by id, then the rest.
		mask := inv.Inputs[1].Data.([]float32)
		var items []int64
		var scores []float32
		for pass := range 2 {
			for i, m := range mask {
				if (m == 0) == (pass == 0) && len(items) < recommend.MaxK {
					items = append(items, int64(i))
					scores = append(scores, m-float32(len(items)))
				}
			}
		}
		resp, err := inv.Encode(modelRows(items, scores))
		if err != nil {
			t.Fatalf("Encode: %v", err)
		}
		if r := resp.(recommend.Response); len(r.Items) == 0 || r.UserID != uid {
			t.Fatalf("response %+v", r)
		}
	})
}
