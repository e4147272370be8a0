package fraud

import "github.com/pilotlight/pilotlight/functions"

var _ functions.Predictor = Handler{}

// PredictJSON implements functions.Predictor: each result's fraud_probability.
func (Handler) PredictJSON(answer []byte) ([]functions.Prediction, error) {
	s, err := scores(answer)
	if err != nil {
		return nil, err
	}
	return predictions(s), nil
}

// PredictOutputs implements functions.Predictor: the "probability" output, row by row.
func (Handler) PredictOutputs(outs []functions.Output) ([]functions.Prediction, error) {
	s, err := outputScores(outs)
	if err != nil {
		return nil, err
	}
	return predictions(s), nil
}

func predictions(s []score) []functions.Prediction {
	out := make([]functions.Prediction, len(s))
	for i, sc := range s {
		out[i] = functions.Prediction{Score: sc.probability}
	}
	return out
}
