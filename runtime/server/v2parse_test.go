package server

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

var envelopeSeeds = []string{
	`{"id":"a","inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}],"outputs":[{"name":"y"}]}`,
	`{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]],"parameters":{"a":[1,{"b":null}]}}],"parameters":{"k":"v"}}`,
	` { "inputs" : [ { "name" : "t\u00e9xt" , "shape" : [ 1 ] , "datatype" : "BYTES" , "data" : [ "a\"b" ] } ] } `,
	`{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":1.5}],"id":null,"outputs":null}`,
	`{"inputs":[]}`,
	`{"inputz":[]}`,
	`{"inputs":[{"name":"x","shape":[1.5],"datatype":"FP32","data":[1]}]}`,
	`{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]} x`,
	`{"inputs":[{"name":"x","oops":1}]}`,
	`{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1,]}]}`,
	`{"inputs":`, `[]`, ``, `{}`, `{"id":1}`,
}

// The hand-written envelope parser must never accept what encoding/json
// (with unknown fields refused) would not, and must read the same values.
func checkAgainstEncodingJSON(t *testing.T, body []byte) {
	if checkJSON(body) != nil {
		return // refused before the envelope parser runs (duplicate keys, bad UTF-8, depth)
	}
	ours, err := parseInferRequest(body)
	if err != nil {
		return
	}
	// The envelope checks data's brackets only; decodeData validates its
	// elements, so data that is not JSON must fail there.
	for _, in := range ours.Inputs {
		if !json.Valid(in.Data) {
			err := scanTokens(in.Data, 1<<30, func([]byte) error { return nil })
			if err == nil || strings.HasPrefix(err.Error(), "data has ") {
				if _, jerr := decodeData(in.Data, "FP64", 0); jerr == nil {
					t.Fatalf("data %q is not JSON, and neither the envelope nor decodeData refused it", in.Data)
				}
			}
			return
		}
	}
	var std inferRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&std); err != nil {
		t.Fatalf("accepted %q, which encoding/json refuses: %v", body, err)
	}
	if ours.ID != std.ID || len(ours.Inputs) != len(std.Inputs) || len(ours.Outputs) != len(std.Outputs) {
		t.Fatalf("%q: ours %+v, encoding/json %+v", body, ours, std)
	}
	for i := range ours.Inputs {
		a, b := ours.Inputs[i], std.Inputs[i]
		if a.Name != b.Name || a.Datatype != b.Datatype || !reflect.DeepEqual(a.Shape, b.Shape) && !(len(a.Shape) == 0 && len(b.Shape) == 0) ||
			!bytes.Equal(bytes.TrimSpace(a.Data), bytes.TrimSpace(b.Data)) {
			t.Fatalf("%q input %d: ours %+v, encoding/json %+v", body, i, a, b)
		}
	}
	for i := range ours.Outputs {
		if ours.Outputs[i].Name != std.Outputs[i].Name {
			t.Fatalf("%q output %d differs", body, i)
		}
	}
}

func TestEnvelopeMatchesEncodingJSON(t *testing.T) {
	accepted := 0
	for _, s := range envelopeSeeds {
		checkAgainstEncodingJSON(t, []byte(s))
		if _, err := parseInferRequest([]byte(s)); err == nil {
			accepted++
		}
	}
	// Four full requests, two empty envelopes (decodeInfer then asks for
	// inputs), and one whose bad data decodeData refuses.
	if accepted != 7 {
		t.Errorf("accepted %d of the seeds, want 7", accepted)
	}
	if _, err := decodeData([]byte("[1,]"), "FP32", 1); err == nil {
		t.Error("a trailing comma in data was accepted")
	}
	if _, err := parseInferRequest([]byte(`{"inputs":[{"name":"x","oops":1}]}`)); err == nil || !strings.Contains(err.Error(), `"oops"`) {
		t.Errorf("unknown field: %v", err)
	}
}

func FuzzEnvelope(f *testing.F) {
	for _, s := range envelopeSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) { checkAgainstEncodingJSON(t, body) })
}
