package fraud_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/pilotlight/pilotlight/functions/fraud"
)

var update = flag.Bool("update", false, "rewrite testdata golden files")

// inferExample is testdata/infer.json: a KServe V2 infer request carrying the
// engineered features of two transactions (the README's curl example uses it).
func inferExample(t *testing.T) []byte {
	t.Helper()
	txs := []fraud.Transaction{
		{Amount: 912.40, AvgAmount: 85, MerchantCategory: "electronics", Country: "BR", HomeCountry: "US", Hour: 3, DeviceNew: true, TxLast24h: 7},
		{Amount: 32.50, AvgAmount: 40, MerchantCategory: "grocery", Country: "US", HomeCountry: "US", Hour: 14, TxLast24h: 1},
	}
	data := make([]float32, len(txs)*fraud.NumFeatures)
	for i := range txs {
		fraud.Features(&txs[i], data[i*fraud.NumFeatures:(i+1)*fraud.NumFeatures])
	}
	req := map[string]any{
		"id": "fraud-example",
		"inputs": []map[string]any{{
			"name": "features", "datatype": "FP32", "shape": []int{len(txs), fraud.NumFeatures}, "data": data,
		}},
	}
	b, err := json.MarshalIndent(req, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func TestInferExampleIsCurrent(t *testing.T) {
	path := filepath.Join("testdata", "infer.json")
	want := inferExample(t)
	if *update {
		if err := os.WriteFile(path, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is stale: run go test ./functions/fraud -run InferExample -update", path)
	}
}
