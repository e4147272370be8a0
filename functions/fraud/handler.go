// Package fraud is the fraud-detection function: a card transaction in, a
// fraud probability, a decision and the features that drove it out. It holds
// the handler the runtime calls (JSON -> "features" tensor -> JSON), the one
// feature-engineering function shared by serving and training, the
// deterministic synthetic transaction generator, and the pure-Go training and
// ONNX export of its two revisions (fraud-00001 logistic regression,
// fraud-00002 a small MLP).
package fraud

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/functions/tensor"
)

// HandlerName is the handler name function.yaml uses.
const HandlerName = "fraud"

// Limits and thresholds of the handler.
const (
	MaxTransactions = 256   // transactions in one {"transactions": [...]} request
	MaxAmount       = 1e9   // amount and avg_amount_30d upper bound
	MaxTxLast24h    = 10000 // tx_last_24h upper bound
	BlockThreshold  = 0.8   // fraud_probability >= this: "block"
	ReviewThreshold = 0.3   // fraud_probability >= this (and below block): "review"
	TopFeatures     = 3     // entries in top_features
)

// Decisions.
const (
	DecisionBlock   = "block"
	DecisionReview  = "review"
	DecisionApprove = "approve"
)

func init() {
	functions.Register(HandlerName, func(*functions.Manifest) (functions.Handler, error) { return Handler{}, nil })
}

// Handler decodes fraud requests. A request is one transaction object:
//
//	{
//	  "amount": 912.40,               // number >= 0, required: the amount charged
//	  "avg_amount_30d": 85.0,         // number >= 0, required: the card's average amount over 30 days
//	  "merchant_category": "electronics", // required, one of Categories
//	  "country": "BR",                // required, non-empty: where the card is used
//	  "home_country": "US",           // required, non-empty: where the card was issued
//	  "hour": 3,                      // integer in [0, 23], required: local hour of the transaction
//	  "device_new": true,             // boolean, required: device never seen on this card
//	  "tx_last_24h": 7,               // integer in [0, 10000], required: card's transactions in the last 24 h
//	  "card_id": "c-1234"             // string, optional: echoed back, not used by the model
//	}
//
// or {"transactions": [ ... 1 to 256 such objects ... ]}. Unknown fields are
// rejected (field names match case-insensitively, as encoding/json does).
//
// The response to one transaction is a Result,
//
//	{"card_id": "c-1234", "fraud_probability": 0.93, "decision": "block",
//	 "top_features": [{"feature": "amount_ratio", "contribution": 2.1}, ...]}
//
// and to a batch {"results": [Result, ...]} in request order. decision is
// "block" at probability >= 0.8, "review" at >= 0.3, else "approve".
// top_features are the three features with the largest absolute contribution
// to the logit (positive pushes towards fraud), largest first.
type Handler struct{}

// Result is the response for one transaction.
type Result struct {
	CardID           string         `json:"card_id,omitempty"`
	FraudProbability float64        `json:"fraud_probability"`
	Decision         string         `json:"decision"`
	TopFeatures      []Contribution `json:"top_features"`
}

// BatchResult is the response to {"transactions": [...]}.
type BatchResult struct {
	Results []Result `json:"results"`
}

// Contribution is one feature's push on the logit.
type Contribution struct {
	Feature      string  `json:"feature"`
	Contribution float64 `json:"contribution"`
}

// request is the wire form: pointers tell a missing field from a zero one.
type request struct {
	CardID           *string  `json:"card_id"`
	Amount           *float64 `json:"amount"`
	AvgAmount        *float64 `json:"avg_amount_30d"`
	MerchantCategory *string  `json:"merchant_category"`
	Country          *string  `json:"country"`
	HomeCountry      *string  `json:"home_country"`
	Hour             *int     `json:"hour"`
	DeviceNew        *bool    `json:"device_new"`
	TxLast24h        *int     `json:"tx_last_24h"`
}

// Decode implements functions.Handler.
func (Handler) Decode(body []byte) (*functions.Invocation, error) {
	top, err := functions.StrictJSON{}.Object(body, `a JSON object (a transaction or {"transactions": [...]})`)
	if err != nil {
		return nil, err
	}
	raw, isBatch := top["transactions"]
	var txs []Transaction
	if !isBatch {
		tx, err := decodeTx(body, "")
		if err != nil {
			return nil, err
		}
		txs = []Transaction{tx}
	} else {
		if len(top) > 1 {
			for k := range top {
				if k != "transactions" {
					return nil, functions.Badf("field %q: a batch request holds only \"transactions\"", k)
				}
			}
		}
		var items []json.RawMessage
		if err := (functions.StrictJSON{At: "transactions"}).Decode(raw, &items); err != nil {
			return nil, err
		}
		switch {
		case len(items) == 0:
			return nil, functions.Badf("transactions: must hold at least one transaction")
		case len(items) > MaxTransactions:
			return nil, functions.Badf("transactions: %d transactions, at most %d per request", len(items), MaxTransactions)
		}
		txs = make([]Transaction, len(items))
		for i, it := range items {
			tx, err := decodeTx(it, fmt.Sprintf("transactions[%d].", i))
			if err != nil {
				return nil, err
			}
			txs[i] = tx
		}
	}
	data := make([]float32, len(txs)*NumFeatures)
	cardIDs := make([]string, len(txs))
	for i := range txs {
		Features(&txs[i], data[i*NumFeatures:(i+1)*NumFeatures])
		cardIDs[i] = txs[i].CardID
	}
	return &functions.Invocation{
		Inputs: []*tensor.Tensor{{Name: "features", Datatype: tensor.FP32, Shape: []int64{int64(len(txs)), int64(NumFeatures)}, Data: data}},
		Rows:   len(txs),
		Encode: func(out map[string]*tensor.Tensor) (any, error) {
			results, err := encode(out, cardIDs)
			if err != nil {
				return nil, err
			}
			if !isBatch {
				return results[0], nil
			}
			return BatchResult{Results: results}, nil
		},
	}, nil
}

// decodeTx strictly decodes and validates one transaction; at prefixes field names.
func decodeTx(raw []byte, at string) (Transaction, error) {
	var r request
	if err := (functions.StrictJSON{At: at}).Decode(raw, &r); err != nil {
		return Transaction{}, err
	}
	if bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return Transaction{}, functions.Badf("%s: must be a transaction object, got null", strings.TrimSuffix(at, ".")+orRequest(at))
	}
	for _, f := range []struct {
		name    string
		missing bool
	}{
		{"amount", r.Amount == nil}, {"avg_amount_30d", r.AvgAmount == nil},
		{"merchant_category", r.MerchantCategory == nil}, {"country", r.Country == nil},
		{"home_country", r.HomeCountry == nil}, {"hour", r.Hour == nil},
		{"device_new", r.DeviceNew == nil}, {"tx_last_24h", r.TxLast24h == nil},
	} {
		if f.missing {
			return Transaction{}, functions.Badf("%s%s: required field is missing", at, f.name)
		}
	}
	for _, f := range []struct {
		name string
		v    float64
	}{{"amount", *r.Amount}, {"avg_amount_30d", *r.AvgAmount}} {
		switch {
		case math.IsNaN(f.v) || math.IsInf(f.v, 0):
			return Transaction{}, functions.Badf("%s%s: must be a finite number", at, f.name)
		case f.v < 0:
			return Transaction{}, functions.Badf("%s%s: %g is negative", at, f.name, f.v)
		case f.v > MaxAmount:
			return Transaction{}, functions.Badf("%s%s: %g is above the limit %g", at, f.name, f.v, float64(MaxAmount))
		}
	}
	if _, ok := categoryIndex[*r.MerchantCategory]; !ok {
		return Transaction{}, functions.Badf("%smerchant_category: unknown category %q (known: %s)", at, *r.MerchantCategory, strings.Join(Categories, ", "))
	}
	if *r.Country == "" {
		return Transaction{}, functions.Badf("%scountry: must not be empty", at)
	}
	if *r.HomeCountry == "" {
		return Transaction{}, functions.Badf("%shome_country: must not be empty", at)
	}
	if *r.Hour < 0 || *r.Hour > 23 {
		return Transaction{}, functions.Badf("%shour: %d out of range [0, 23]", at, *r.Hour)
	}
	if *r.TxLast24h < 0 || *r.TxLast24h > MaxTxLast24h {
		return Transaction{}, functions.Badf("%stx_last_24h: %d out of range [0, %d]", at, *r.TxLast24h, MaxTxLast24h)
	}
	tx := Transaction{
		Amount: *r.Amount, AvgAmount: *r.AvgAmount, MerchantCategory: *r.MerchantCategory,
		Country: *r.Country, HomeCountry: *r.HomeCountry, Hour: *r.Hour, DeviceNew: *r.DeviceNew, TxLast24h: *r.TxLast24h,
	}
	if r.CardID != nil {
		tx.CardID = *r.CardID
	}
	return tx, nil
}

func orRequest(at string) string {
	if at == "" {
		return "request body"
	}
	return ""
}

// encode turns this invocation's rows of "probability" and "contributions"
// into one Result per transaction.
func encode(out map[string]*tensor.Tensor, cardIDs []string) ([]Result, error) {
	rows := len(cardIDs)
	prob, err := output(out, "probability", rows, 1)
	if err != nil {
		return nil, err
	}
	contrib, err := output(out, "contributions", rows, NumFeatures)
	if err != nil {
		return nil, err
	}
	results := make([]Result, rows)
	for i := range results {
		p := shortest(prob[i])
		if math.IsNaN(p) || p < 0 || p > 1 {
			return nil, fmt.Errorf("fraud model returned probability %v for row %d", p, i)
		}
		res := Result{CardID: cardIDs[i], FraudProbability: p, Decision: decide(p)}
		row := contrib[i*NumFeatures : (i+1)*NumFeatures]
		order := make([]int, NumFeatures)
		for j := range order {
			order[j] = j
		}
		sort.SliceStable(order, func(a, b int) bool { return math.Abs(float64(row[order[a]])) > math.Abs(float64(row[order[b]])) })
		for _, j := range order[:TopFeatures] {
			c := shortest(row[j])
			if math.IsNaN(c) || math.IsInf(c, 0) {
				return nil, fmt.Errorf("fraud model returned contribution %v for feature %s in row %d", c, FeatureNames[j], i)
			}
			res.TopFeatures = append(res.TopFeatures, Contribution{Feature: FeatureNames[j], Contribution: c})
		}
		results[i] = res
	}
	return results, nil
}

func output(out map[string]*tensor.Tensor, name string, rows, width int) ([]float32, error) {
	t, ok := out[name]
	if !ok {
		return nil, fmt.Errorf("fraud model output %q missing", name)
	}
	d, ok := t.Data.([]float32)
	if !ok || len(t.Shape) != 2 || t.Shape[0] != int64(rows) || t.Shape[1] != int64(width) || len(d) != rows*width {
		return nil, fmt.Errorf("fraud model output %q is %s%v, want FP32[%d %d]", name, t.Datatype, t.Shape, rows, width)
	}
	return d, nil
}

func decide(p float64) string {
	switch {
	case p >= BlockThreshold:
		return DecisionBlock
	case p >= ReviewThreshold:
		return DecisionReview
	}
	return DecisionApprove
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
