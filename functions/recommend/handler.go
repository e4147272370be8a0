// Package recommend is the recommendation function: a user (and optionally
// the candidate items to rank) in, the user's top items with scores out. It
// holds the handler the runtime calls (JSON -> user_id and candidate_mask
// tensors -> JSON), the deterministic synthetic interaction log, and the
// pure-Go BPR matrix factorisation training and ONNX export of its revision
// recommend-00001.
package recommend

import (
	"fmt"
	"math"
	"strconv"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/functions/tensor"
)

// HandlerName is the handler name function.yaml uses.
const HandlerName = "recommend"

// Request limits.
const (
	DefaultK      = 10
	MaxCandidates = 1000 // entries in "candidates", duplicates included
)

func init() {
	functions.Register(HandlerName, func(*functions.Manifest) (functions.Handler, error) { return Handler{}, nil })
}

// Handler decodes recommend requests:
//
//	{
//	  "user_id": 42,            // integer in [0, NumUsers), required
//	  "k": 10,                  // integer in [1, 100], optional, default 10
//	  "candidates": [17, 5, 9]  // optional: 1 to 1000 item ids in [0, NumItems) to rank;
//	                            // omitted (or null) ranks the whole catalogue
//	}
//
// Duplicate candidates are accepted and count once. Unknown fields are
// rejected (names match case-insensitively, as encoding/json does).
//
// The response is a Response: {"user_id": 42, "items": [{"item_id": 17,
// "score": 3.2}, ...]}, best first, with k items, or every candidate when
// there are fewer than k distinct candidates.
type Handler struct{}

// Response answers one request.
type Response struct {
	UserID int64       `json:"user_id"`
	Items  []ItemScore `json:"items"`
}

// ItemScore is one recommended item.
type ItemScore struct {
	ItemID int64   `json:"item_id"`
	Score  float64 `json:"score"`
}

// requestJSON decodes a request, naming what each field must be.
var requestJSON = functions.StrictJSON{
	Want:  map[string]string{"user_id": "an integer", "k": "an integer", "candidates": "an array of integer item ids"},
	Known: "(known: user_id, k, candidates)",
}

type request struct {
	UserID     *int64  `json:"user_id"`
	K          *int    `json:"k"`
	Candidates []int64 `json:"candidates"`
}

// Decode implements functions.Handler.
func (Handler) Decode(body []byte) (*functions.Invocation, error) {
	// An object first, so a non-object body is named as such, not as a field.
	if _, err := (functions.StrictJSON{}).Object(body, "a JSON object with user_id"); err != nil {
		return nil, err
	}
	var r request
	if err := requestJSON.Decode(body, &r); err != nil {
		return nil, err
	}
	if r.UserID == nil {
		return nil, functions.Badf("user_id: required field is missing")
	}
	uid := *r.UserID
	if uid < 0 || uid >= NumUsers {
		return nil, functions.Badf("user_id: %d out of range [0, %d)", uid, NumUsers)
	}
	k := DefaultK
	if r.K != nil {
		k = *r.K
	}
	if k < 1 || k > MaxK {
		return nil, functions.Badf("k: %d out of range [1, %d]", k, MaxK)
	}
	mask := make([]float32, NumItems)
	var allowed map[int64]bool
	if r.Candidates != nil {
		switch {
		case len(r.Candidates) == 0:
			return nil, functions.Badf("candidates: must not be empty (omit it to rank every item)")
		case len(r.Candidates) > MaxCandidates:
			return nil, functions.Badf("candidates: %d ids, at most %d per request", len(r.Candidates), MaxCandidates)
		}
		allowed = make(map[int64]bool, len(r.Candidates))
		for i := range mask {
			mask[i] = MaskExcluded
		}
		for i, c := range r.Candidates {
			if c < 0 || c >= NumItems {
				return nil, functions.Badf("candidates[%d]: item id %d out of range [0, %d)", i, c, NumItems)
			}
			allowed[c] = true
			mask[c] = 0
		}
		k = min(k, len(allowed))
	}
	return &functions.Invocation{
		Inputs: []*tensor.Tensor{
			{Name: "user_id", Datatype: tensor.INT64, Shape: []int64{1}, Data: []int64{uid}},
			{Name: "candidate_mask", Datatype: tensor.FP32, Shape: []int64{1, NumItems}, Data: mask},
		},
		Rows: 1,
		Encode: func(out map[string]*tensor.Tensor) (any, error) {
			return encode(out, uid, k, allowed)
		},
	}, nil
}

func encode(out map[string]*tensor.Tensor, uid int64, k int, allowed map[int64]bool) (Response, error) {
	items, ok1 := out["items"]
	scores, ok2 := out["scores"]
	if !ok1 || !ok2 {
		return Response{}, fmt.Errorf("recommend model outputs %q and %q are required", "items", "scores")
	}
	ids, ok1 := items.Data.([]int64)
	vals, ok2 := scores.Data.([]float32)
	if !ok1 || !ok2 || len(items.Shape) != 2 || len(scores.Shape) != 2 || items.Shape[0] != 1 || scores.Shape[0] != 1 ||
		len(ids) != len(vals) || len(ids) < k {
		return Response{}, fmt.Errorf("recommend model outputs items %s%v and scores %s%v, want INT64[1 >=%d] and FP32[1 >=%d]",
			items.Datatype, items.Shape, scores.Datatype, scores.Shape, k, k)
	}
	resp := Response{UserID: uid, Items: make([]ItemScore, 0, k)}
	for i, id := range ids {
		if len(resp.Items) == k {
			break
		}
		if allowed != nil && !allowed[id] {
			continue // masked out; only reachable when fewer candidates than K
		}
		s := shortest(vals[i])
		if id < 0 || id >= NumItems || math.IsNaN(s) || math.IsInf(s, 0) {
			return Response{}, fmt.Errorf("recommend model returned item %d with score %v", id, s)
		}
		resp.Items = append(resp.Items, ItemScore{ItemID: id, Score: s})
	}
	if len(resp.Items) < k {
		return Response{}, fmt.Errorf("recommend model returned %d usable items, want %d", len(resp.Items), k)
	}
	return resp, nil
}

// shortest widens a model's float32 to the float64 with the same shortest
// decimal form, so JSON says 0.9994137 rather than 0.9994137287139893.
func shortest(x float32) float64 {
	v, err := strconv.ParseFloat(strconv.FormatFloat(float64(x), 'g', -1, 32), 64)
	if err != nil {
		return float64(x) // unreachable: FormatFloat output always parses
	}
	return v
}
