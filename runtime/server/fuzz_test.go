package server

import (
	"testing"

	"github.com/pilotlight/pilotlight/functions/tensor"
	"github.com/pilotlight/pilotlight/runtime/ort"
)

// FuzzDecodeInfer feeds arbitrary bodies to the V2 request decoder against
// a model with FP32 and INT64 inputs: it must never panic, and whatever it
// accepts must be tensors that match their shapes and the model.
func FuzzDecodeInfer(f *testing.F) {
	inputs := []ort.IO{
		{Name: "x", Datatype: tensor.FP32, Shape: []int64{-1, 3}},
		{Name: "ids", Datatype: tensor.INT64, Shape: []int64{-1}},
	}
	outputs := []ort.IO{{Name: "y", Datatype: tensor.FP32, Shape: []int64{-1}}}
	for _, seed := range []string{
		`{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]},{"name":"ids","shape":[1],"datatype":"INT64","data":[7]}]}`,
		`{"id":"a","inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","data":[[1,2,3],[4,5,6]]},{"name":"ids","shape":[2],"datatype":"INT64","data":[1,2]}],"outputs":[{"name":"y"}]}`,
		`{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1e999,2,3]}]}`,
		`{"inputs":[{"name":"x","shape":[-1,3],"datatype":"FP32","data":[]}]}`,
		`{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[[[[[[1]]]]],2,3]}]}`,
		`{"inputs":[{"name":"x","shape":[99999999999,3],"datatype":"FP32","data":[1]}]}`,
		`{"inputs":[{"name":"x","name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}`,
		"{\"inputs\":[{\"name\":\"\xff\xfe\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}]}",
		`[]`, `null`, ``, `{"inputs":`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		_, ts, rows, err := decodeInfer(body, inputs, outputs)
		if err != nil {
			return
		}
		if rows < 1 {
			t.Fatalf("accepted %d rows", rows)
		}
		if len(ts) != len(inputs) {
			t.Fatalf("accepted %d tensors for %d inputs", len(ts), len(inputs))
		}
		for _, x := range ts {
			if err := x.Validate(); err != nil {
				t.Fatalf("accepted an invalid tensor: %v", err)
			}
			if x.Shape[0] != int64(rows) {
				t.Fatalf("tensor %s has %d rows, request has %d", x.Name, x.Shape[0], rows)
			}
		}
	})
}
