package functions

// Prediction is what one answer predicted, as outcomes posted later are
// scored against it: a probability of the positive class (fraud: the
// transaction is fraudulent) or a ranking of items, best first
// (recommend).
type Prediction struct {
	Score float64
	Items []int64
}

// Predictor is an optional interface of a Handler: what an answer
// predicted, one Prediction per row (transaction, user), read in the
// protocol the request was sent in: the function's own JSON or the V2
// output tensors. Functions whose handler has none record no predictions.
type Predictor interface {
	PredictJSON(answer []byte) ([]Prediction, error)
	PredictOutputs(outs []Output) ([]Prediction, error)
}

// PredictorFor is the Predictor of m's handler, or nil.
func PredictorFor(m *Manifest) Predictor {
	h, err := NewHandler(m)
	if p, ok := h.(Predictor); ok && err == nil {
		return p
	}
	return nil
}
