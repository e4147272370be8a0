package fraud_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/pilotlight/pilotlight/functions/fraud"
	"github.com/pilotlight/pilotlight/functions/functionstest"
	"github.com/pilotlight/pilotlight/functions/tensor"
)

const validTx = `{"amount": 912.40, "avg_amount_30d": 85.0, "merchant_category": "electronics", "card_id": "c-1234", "country": "BR", "home_country": "US", "hour": 3, "device_new": true, "tx_last_24h": 7}`

// with returns validTx with one field replaced (value "" deletes it).
func with(field, value string) string {
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(validTx), &m); err != nil {
		panic(err)
	}
	if value == "" {
		delete(m, field)
	} else {
		m[field] = json.RawMessage(value)
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func batchOf(n int, tx string) string {
	return `{"transactions": [` + strings.TrimSuffix(strings.Repeat(tx+",", n), ",") + `]}`
}

func TestDecodeValid(t *testing.T) {
	for _, tc := range []struct {
		name string
		body string
		rows int
	}{
		{"single", validTx, 1},
		{"no card_id", with("card_id", ""), 1},
		{"zero amount", with("amount", "0"), 1},
		{"hour 23", with("hour", "23"), 1},
		{"batch of one", batchOf(1, validTx), 1},
		{"batch of 256", batchOf(fraud.MaxTransactions, validTx), fraud.MaxTransactions},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inv, err := fraud.Handler{}.Decode([]byte(tc.body))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if inv.Rows != tc.rows || len(inv.Inputs) != 1 {
				t.Fatalf("rows %d, inputs %d; want %d rows, 1 input", inv.Rows, len(inv.Inputs), tc.rows)
			}
			x := inv.Inputs[0]
			if err := x.Validate(); err != nil {
				t.Fatal(err)
			}
			if x.Name != "features" || x.Shape[0] != int64(tc.rows) || x.Shape[1] != int64(fraud.NumFeatures) {
				t.Fatalf("input %s%v", x.Name, x.Shape)
			}
		})
	}
}

// TestFeatures pins the engineered features of one transaction.
func TestFeatures(t *testing.T) {
	inv, err := fraud.Handler{}.Decode([]byte(validTx))
	if err != nil {
		t.Fatal(err)
	}
	x := inv.Inputs[0].Data.([]float32)
	want := map[int]float32{
		fraud.FeatForeign: 1, fraud.FeatDeviceNew: 1, fraud.FeatNight: 1,
		fraud.FeatMerchant0 + 4: 1, // electronics
	}
	for i, w := range want {
		if x[i] != w {
			t.Errorf("feature %s = %v, want %v", fraud.FeatureNames[i], x[i], w)
		}
	}
	if x[fraud.FeatAmountRatio] < 2.3 || x[fraud.FeatAmountRatio] > 2.4 { // log(913.4/86)
		t.Errorf("amount_ratio = %v, want ~2.36", x[fraud.FeatAmountRatio])
	}
	for i := fraud.FeatMerchant0; i < fraud.NumFeatures; i++ {
		if i != fraud.FeatMerchant0+4 && x[i] != 0 {
			t.Errorf("%s = %v, want 0", fraud.FeatureNames[i], x[i])
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	for _, tc := range []struct {
		name, body, want string
	}{
		{"empty body", ``, "malformed JSON"},
		{"truncated", `{"amount": 1`, "malformed JSON"},
		{"syntax", `{"amount": }`, "malformed JSON"},
		{"not an object", `[1, 2]`, "JSON object"},
		{"null", `null`, "JSON object"},
		{"trailing data", validTx + ` {}`, "after the top-level value"},
		{"unknown field", with("merchant", `"x"`), `merchant: unknown field`},
		{"missing amount", with("amount", ""), "amount: required"},
		{"missing avg", with("avg_amount_30d", ""), "avg_amount_30d: required"},
		{"missing category", with("merchant_category", ""), "merchant_category: required"},
		{"missing country", with("country", ""), "country: required"},
		{"missing home", with("home_country", ""), "home_country: required"},
		{"missing hour", with("hour", ""), "hour: required"},
		{"missing device", with("device_new", ""), "device_new: required"},
		{"missing velocity", with("tx_last_24h", ""), "tx_last_24h: required"},
		{"amount string", with("amount", `"12"`), "amount: must be a number"},
		{"amount null", with("amount", `null`), "amount: required"},
		{"hour float", with("hour", `3.5`), "hour: must be an integer"},
		{"device string", with("device_new", `"yes"`), "device_new: must be a boolean"},
		{"category number", with("merchant_category", `7`), "merchant_category: must be a string"},
		{"card_id number", with("card_id", `7`), "card_id: must be a string"},
		{"NaN literal", with("amount", `1`)[:0] + `{"amount": NaN}`, "malformed JSON"},
		{"amount overflow", with("amount", `1e400`), "amount"},
		{"negative amount", with("amount", `-1`), "amount: -1 is negative"},
		{"negative avg", with("avg_amount_30d", `-0.5`), "avg_amount_30d: -0.5 is negative"},
		{"huge amount", with("amount", `1e300`), "amount: 1e+300 is above the limit"},
		{"unknown category", with("merchant_category", `"casino"`), `merchant_category: unknown category "casino"`},
		{"empty country", with("country", `""`), "country: must not be empty"},
		{"hour 24", with("hour", `24`), "hour: 24 out of range"},
		{"hour -1", with("hour", `-1`), "hour: -1 out of range"},
		{"negative velocity", with("tx_last_24h", `-2`), "tx_last_24h: -2 out of range"},
		{"empty batch", `{"transactions": []}`, "transactions: must hold at least one"},
		{"null batch", `{"transactions": null}`, "transactions: must hold at least one"},
		{"batch too big", batchOf(fraud.MaxTransactions+1, validTx), "transactions: 257 transactions, at most 256"},
		{"batch not array", `{"transactions": {}}`, "transactions: must be an array"},
		{"batch item bad", batchOf(2, validTx)[:len(batchOf(2, validTx))-2] + `, {"amount": "x"}]}`, "transactions[2].amount: must be a number"},
		{"batch item not object", `{"transactions": [5]}`, "transactions[0]: must be an object"},
		{"batch item null", `{"transactions": [null]}`, "transactions[0]: must be a transaction object"},
		{"batch item unknown", `{"transactions": [` + with("zip", `"1"`) + `]}`, "transactions[0].zip: unknown field"},
		{"batch item missing", `{"transactions": [` + with("hour", "") + `]}`, "transactions[0].hour: required"},
		{"batch mixed with tx", `{"transactions": [` + validTx + `], "amount": 3}`, `field "amount": a batch request holds only`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			functionstest.RejectsBadRequest(t, fraud.Handler{}, tc.body, tc.want)
		})
	}
}

// rowsOutput fakes the runtime's output rows for n transactions.
func rowsOutput(probs []float32, contrib [][]float32) map[string]*tensor.Tensor {
	F := fraud.NumFeatures
	c := make([]float32, 0, len(probs)*F)
	for _, row := range contrib {
		c = append(c, row...)
	}
	return map[string]*tensor.Tensor{
		"probability":   {Name: "probability", Datatype: tensor.FP32, Shape: []int64{int64(len(probs)), 1}, Data: probs},
		"contributions": {Name: "contributions", Datatype: tensor.FP32, Shape: []int64{int64(len(probs)), int64(F)}, Data: c},
	}
}

func contribRow(vals map[int]float32) []float32 {
	row := make([]float32, fraud.NumFeatures)
	for i, v := range vals {
		row[i] = v
	}
	return row
}

func TestEncode(t *testing.T) {
	single, err := fraud.Handler{}.Decode([]byte(validTx))
	if err != nil {
		t.Fatal(err)
	}
	out := rowsOutput([]float32{0.875}, [][]float32{contribRow(map[int]float32{
		fraud.FeatAmountRatio: 2.5, fraud.FeatNight: -3, fraud.FeatDeviceNew: 0.5, fraud.FeatForeign: 0.25,
	})})
	resp, err := single.Encode(out)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(resp)
	want := `{"card_id":"c-1234","fraud_probability":0.875,"decision":"block","top_features":[{"feature":"night_hour","contribution":-3},{"feature":"amount_ratio","contribution":2.5},{"feature":"device_new","contribution":0.5}]}`
	if string(got) != want {
		t.Errorf("single response\n got %s\nwant %s", got, want)
	}

	batch, err := fraud.Handler{}.Decode([]byte(`{"transactions": [` + with("card_id", "") + `,` + validTx + `]}`))
	if err != nil {
		t.Fatal(err)
	}
	out = rowsOutput([]float32{0.125, 0.5}, [][]float32{
		contribRow(map[int]float32{0: 1, 1: 1, 2: 1, 3: 1}), // ties keep feature order
		contribRow(map[int]float32{fraud.FeatVelocity: 1.5, fraud.FeatMerchant0: -0.25, fraud.FeatAvgLog: 0.75}),
	})
	resp, err = batch.Encode(out)
	if err != nil {
		t.Fatal(err)
	}
	got, _ = json.Marshal(resp)
	want = `{"results":[` +
		`{"fraud_probability":0.125,"decision":"approve","top_features":[{"feature":"amount_log","contribution":1},{"feature":"avg_amount_log","contribution":1},{"feature":"amount_ratio","contribution":1}]},` +
		`{"card_id":"c-1234","fraud_probability":0.5,"decision":"review","top_features":[{"feature":"velocity_24h","contribution":1.5},{"feature":"avg_amount_log","contribution":0.75},{"feature":"merchant_grocery","contribution":-0.25}]}]}`
	if string(got) != want {
		t.Errorf("batch response\n got %s\nwant %s", got, want)
	}
}

func TestEncodeRejectsBadOutputs(t *testing.T) {
	inv, err := fraud.Handler{}.Decode([]byte(validTx))
	if err != nil {
		t.Fatal(err)
	}
	good := func() map[string]*tensor.Tensor { return rowsOutput([]float32{0.5}, [][]float32{contribRow(nil)}) }
	for name, mutate := range map[string]func(map[string]*tensor.Tensor){
		"missing probability": func(m map[string]*tensor.Tensor) { delete(m, "probability") },
		"wrong rows":          func(m map[string]*tensor.Tensor) { m["probability"].Shape = []int64{2, 1} },
		"wrong type":          func(m map[string]*tensor.Tensor) { m["contributions"].Data = []float64{1} },
		"NaN probability":     func(m map[string]*tensor.Tensor) { m["probability"].Data = []float32{float32(nan())} },
	} {
		out := good()
		mutate(out)
		if _, err := inv.Encode(out); err == nil {
			t.Errorf("%s: Encode succeeded", name)
		}
	}
}

func nan() float64 { var z float64; return z / z }

// FuzzDecode: Decode never panics, rejects only with *functions.BadRequest,
// and whatever it accepts is a valid tensor whose rows Encode can answer.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(validTx))
	f.Add([]byte(batchOf(3, validTx)))
	f.Fuzz(func(t *testing.T, body []byte) {
		inv := functionstest.DecodeOrBadRequest(t, fraud.Handler{}, body)
		if inv == nil {
			return
		}
		if inv.Rows < 1 || inv.Rows > fraud.MaxTransactions || len(inv.Inputs) != 1 {
			t.Fatalf("rows %d, inputs %d", inv.Rows, len(inv.Inputs))
		}
		x := inv.Inputs[0]
		if err := x.Validate(); err != nil {
			t.Fatal(err)
		}
		if x.Shape[0] != int64(inv.Rows) {
			t.Fatalf("shape %v for %d rows", x.Shape, inv.Rows)
		}
		for i, v := range x.Data.([]float32) {
			if v != v || v > 1e6 || v < -1e6 {
				t.Fatalf("feature %d is %v", i%fraud.NumFeatures, v)
			}
		}
		probs := make([]float32, inv.Rows)
		rows := make([][]float32, inv.Rows)
		for i := range rows {
			probs[i] = 0.5
			rows[i] = contribRow(nil)
		}
		if _, err := inv.Encode(rowsOutput(probs, rows)); err != nil {
			t.Fatalf("Encode: %v", err)
		}
	})
}
