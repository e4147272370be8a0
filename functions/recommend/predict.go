package recommend

import (
	"encoding/json"
	"errors"
	"math"

	"github.com/pilotlight/pilotlight/functions"
)

var _ functions.Predictor = Handler{}

// PredictJSON implements functions.Predictor: the answer's items, in rank order.
func (Handler) PredictJSON(answer []byte) ([]functions.Prediction, error) {
	var a struct {
		Items []struct {
			ItemID *int64 `json:"item_id"`
		} `json:"items"`
	}
	if err := json.Unmarshal(answer, &a); err != nil {
		return nil, err
	}
	if a.Items == nil {
		return nil, errors.New("an answer without items")
	}
	items := make([]int64, len(a.Items))
	for i, it := range a.Items {
		if it.ItemID == nil {
			return nil, errors.New("an item without item_id")
		}
		items[i] = *it.ItemID
	}
	return []functions.Prediction{{Items: items}}, nil
}

// PredictOutputs implements functions.Predictor: each row of the "items"
// output (shape [users, ranked]) as one user's ranking.
func (Handler) PredictOutputs(outs []functions.Output) ([]functions.Prediction, error) {
	o, err := functions.OutputNamed(outs, "items")
	if err != nil {
		return nil, err
	}
	rows, width := 1, len(o.Data)
	if len(o.Shape) == 2 && o.Shape[0] > 0 {
		rows, width = int(o.Shape[0]), int(o.Shape[1])
	}
	if width <= 0 || rows*width != len(o.Data) {
		return nil, errors.New("items output does not match its shape")
	}
	out := make([]functions.Prediction, rows)
	for r := range rows {
		items := make([]int64, width)
		for i, v := range o.Data[r*width : (r+1)*width] {
			items[i] = int64(math.Round(v))
		}
		out[r] = functions.Prediction{Items: items}
	}
	return out, nil
}
