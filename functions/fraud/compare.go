package fraud

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"

	"github.com/pilotlight/pilotlight/functions"
)

var _ functions.Comparer = Handler{}

// CompareJSON implements functions.Comparer: per transaction, the decisions
// agree or not, and |Δ fraud_probability|; Agreement is the share of
// agreeing decisions and Delta the mean |Δ probability|. An answer is one
// Result (a single transaction) or {"results": [...]} (a batch).
func (Handler) CompareJSON(primary, candidate []byte) (functions.Comparison, error) {
	a, err := scores(primary)
	if err != nil {
		return functions.Comparison{}, fmt.Errorf("serving answer: %w", err)
	}
	b, err := scores(candidate)
	if err != nil {
		return functions.Comparison{}, fmt.Errorf("candidate answer: %w", err)
	}
	return compareScores(a, b)
}

// CompareOutputs implements functions.Comparer for V2 answers: the model's
// "probability" output row by row, each decided at the handler's
// thresholds as a function answer would be.
func (Handler) CompareOutputs(primary, candidate []functions.Output) (functions.Comparison, error) {
	a, err := outputScores(primary)
	if err != nil {
		return functions.Comparison{}, fmt.Errorf("serving answer: %w", err)
	}
	b, err := outputScores(candidate)
	if err != nil {
		return functions.Comparison{}, fmt.Errorf("candidate answer: %w", err)
	}
	return compareScores(a, b)
}

type score struct {
	probability float64
	decision    string
}

func compareScores(a, b []score) (functions.Comparison, error) {
	if len(a) != len(b) {
		return functions.Comparison{}, fmt.Errorf("%d results against %d", len(b), len(a))
	}
	var agree, delta float64
	for i := range a {
		if a[i].decision == b[i].decision {
			agree++
		}
		delta += math.Abs(a[i].probability - b[i].probability)
	}
	n := float64(len(a))
	return functions.Comparison{Agreement: agree / n, Delta: delta / n}, nil
}

func outputScores(outs []functions.Output) ([]score, error) {
	o, err := functions.OutputNamed(outs, "probability")
	if err != nil {
		return nil, err
	}
	if len(o.Data) == 0 {
		return nil, errors.New("no results")
	}
	out := make([]score, len(o.Data))
	for i, p := range o.Data {
		out[i] = score{p, decide(p)}
	}
	return out, nil
}

func scores(raw []byte) ([]score, error) {
	type result struct {
		FraudProbability *float64 `json:"fraud_probability"`
		Decision         string   `json:"decision"`
	}
	var doc struct {
		result
		Results []result `json:"results"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	rs := doc.Results
	if rs == nil {
		rs = []result{doc.result}
	}
	out := make([]score, 0, len(rs))
	for _, r := range rs {
		if r.FraudProbability == nil || r.Decision == "" {
			return nil, errors.New("a result without fraud_probability and decision")
		}
		out = append(out, score{*r.FraudProbability, r.Decision})
	}
	if len(out) == 0 {
		return nil, errors.New("no results")
	}
	return out, nil
}
