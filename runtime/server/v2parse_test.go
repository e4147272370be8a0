package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
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
	// encoding/json's leniencies the parser must share: names in any case,
	// null for a string, a shape or an element, and a later key replacing an earlier.
	`{"Inputs":[{"NAME":"x","Shape":[1],"DataType":"FP32","Data":[1]}],"OUTPUTS":[{"Name":"y"}]}`,
	`{"inputs":[null,{"name":null,"shape":null,"datatype":"FP32","data":null,"parameters":null}],"outputs":[null],"parameters":null}`,
	`{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1]}],"INPUTS":[{"name":"b","shape":[1],"datatype":"FP32","data":[2]}]}`,
	// and its refusals: parameters that are not an object.
	`{"inputs":[],"parameters":5}`,
	`{"inputs":[{"name":"x","parameters":"p"}]}`,
}

// The hand-written envelope parser and encoding/json (unknown fields
// refused) must agree both ways on whatever passes checkJSON: the parser
// accepts exactly what encoding/json accepts, and reads the same values.
func checkAgainstEncodingJSON(t *testing.T, body []byte) {
	if checkJSON(body) != nil {
		return // refused before the envelope parser runs (duplicate keys, bad UTF-8, depth)
	}
	var std inferRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	stdErr := dec.Decode(&std)
	if stdErr == nil {
		if _, err := dec.Token(); err != io.EOF {
			stdErr = errors.New("data after the top-level value")
		}
	}
	ours, err := parseInferRequest(body)
	if err != nil {
		if stdErr == nil {
			t.Fatalf("refused %q (%v), which encoding/json and checkJSON accept", body, err)
		}
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
	if stdErr != nil {
		t.Fatalf("accepted %q, which encoding/json refuses: %v", body, stdErr)
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
	// inputs), one whose bad data decodeData refuses, and the three lenient ones.
	if accepted != 10 {
		t.Errorf("accepted %d of the seeds, want 10", accepted)
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
