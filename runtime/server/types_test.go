package server_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pilotlight/pilotlight/functions/tensor"
	"github.com/pilotlight/pilotlight/internal/corpus"
	pb "github.com/pilotlight/pilotlight/proto/inference"
)

// typedInputs is a valid V2 request for the typed corpus model, one input a line, by name.
var typedInputs = map[string]string{
	"x_fp16":   `{"name":"x_fp16","datatype":"FP16","shape":[2,3],"data":[0,0.5,-1,2,100,1000]}`,
	"x_bf16":   `{"name":"x_bf16","datatype":"BF16","shape":[2],"data":[1.5,-3]}`,
	"x_fp64":   `{"name":"x_fp64","datatype":"FP64","shape":[2],"data":[4,2]}`,
	"x_int8":   `{"name":"x_int8","datatype":"INT8","shape":[2,4],"data":[1,-2,127,-128,0,5,-5,9]}`,
	"x_int16":  `{"name":"x_int16","datatype":"INT16","shape":[3],"data":[-300,300,-32767]}`,
	"x_uint8":  `{"name":"x_uint8","datatype":"UINT8","shape":[2,4],"data":[0,1,128,255,2,3,4,5]}`,
	"x_uint16": `{"name":"x_uint16","datatype":"UINT16","shape":[2],"data":[65535,7]}`,
	"x_uint32": `{"name":"x_uint32","datatype":"UINT32","shape":[2],"data":[4294967295,8]}`,
	"x_uint64": `{"name":"x_uint64","datatype":"UINT64","shape":[2],"data":[18446744073709551615,9]}`,
	"flags":    `{"name":"flags","datatype":"BOOL","shape":[2],"data":[true,false]}`,
	"words":    `{"name":"words","datatype":"BYTES","shape":[2],"data":["héllo",""]}`,
	"scale":    `{"name":"scale","datatype":"FP32","shape":[],"data":2.5}`,
	"count":    `{"name":"count","datatype":"INT64","shape":[],"data":[5]}`,
}

// typedBody is typedInputs with some inputs replaced.
func typedBody(replace map[string]string) string {
	var parts []string
	for _, name := range []string{"x_fp16", "x_bf16", "x_fp64", "x_int8", "x_int16", "x_uint8", "x_uint16", "x_uint32", "x_uint64", "flags", "words", "scale", "count"} {
		in := typedInputs[name]
		if r, ok := replace[name]; ok {
			in = r
		}
		if in != "" {
			parts = append(parts, in)
		}
	}
	return `{"inputs":[` + strings.Join(parts, ",") + `]}`
}

// TestEveryDatatypeOverRESTAndGRPC serves the typed corpus model and checks
// every datatype and rank-0 scalars both ways, and that each kind of
// mismatch is a 4xx (InvalidArgument) naming the input and the problem.
func TestEveryDatatypeOverRESTAndGRPC(t *testing.T) {
	addr, client, err := serveModel(t, corpus.Typed(), "", map[string]string{})
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + addr + "/v2/models/byo/infer"
	code, out := do(t, "POST", url, typedBody(nil))
	if code != 200 {
		t.Fatalf("infer: %d %v", code, out)
	}
	got := map[string]string{}
	for _, o := range out["outputs"].([]any) {
		o := o.(map[string]any)
		got[o["name"].(string)] = fmt.Sprintf("%v%v%v", o["datatype"], o["shape"], o["data"])
	}
	for name, want := range map[string]string{
		"fp16_plus_one":  "FP16[2 3][1 1.5 0 3 101 1001]",
		"bf16_doubled":   "BF16[2][3 -6]",
		"int8_neg":       "INT8[2 4][-1 2 -127 -128 0 -5 5 -9]", // -(-128) wraps in two's complement
		"uint8_as_int32": "INT32[2 4][0 1 128 255 2 3 4 5]",
		"uint64_same":    "UINT64[2][1.8446744073709552e+19 9]",
		"words_same":     "BYTES[2][héllo ]",
		"total":          "FP32[][12.5]",
		"total_is_big":   "BOOL[][true]",
	} {
		if got[name] != want {
			t.Errorf("output %s = %s, want %s", name, got[name], want)
		}
	}
	for _, tc := range []struct {
		name, input, body, want string
	}{
		{"INT8 out of range", "x_int8", `{"name":"x_int8","datatype":"INT8","shape":[2,4],"data":[1,2,3,128,0,0,0,0]}`, `input "x_int8": 128 is not an INT8 (an integer in [-128, 127])`},
		{"UINT8 negative", "x_uint8", `{"name":"x_uint8","datatype":"UINT8","shape":[2,4],"data":[-1,0,0,0,0,0,0,0]}`, `-1 is not a UINT8 (an integer in [0, 255])`},
		{"UINT64 fraction", "x_uint64", `{"name":"x_uint64","datatype":"UINT64","shape":[2],"data":[1.5,2]}`, `1.5 is not a UINT64`},
		{"FP16 out of range", "x_fp16", `{"name":"x_fp16","datatype":"FP16","shape":[2,3],"data":[1,2,3,4,5,70000]}`, `70000 is out of FP16's range`},
		{"FP16 sent as FP32", "x_fp16", `{"name":"x_fp16","datatype":"FP32","shape":[2,3],"data":[1,2,3,4,5,6]}`, `input "x_fp16": datatype "FP32", the model expects FP16`},
		{"scalar sent with a dimension", "scale", `{"name":"scale","datatype":"FP32","shape":[1],"data":[2.5]}`, `input "scale": shape [1] has 1 dimensions, the model expects 0`},
		{"scalar with two values", "count", `{"name":"count","datatype":"INT64","shape":[],"data":[5,6]}`, `input "count": data has more values than shape holds (1)`},
		{"BOOL as a number", "flags", `{"name":"flags","datatype":"BOOL","shape":[2],"data":[1,0]}`, `1 is not a BOOL`},
		{"BYTES as numbers", "words", `{"name":"words","datatype":"BYTES","shape":[2],"data":[1,2]}`, `BYTES data must be strings`},
		{"scalar missing", "count", "", `missing input "count" (INT64 [])`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := do(t, "POST", url, typedBody(map[string]string{tc.input: tc.body}))
			if code != http.StatusBadRequest || !strings.Contains(fmt.Sprint(out["error"]), tc.want) {
				t.Errorf("%d %v, want 400 with %q", code, out, tc.want)
			}
		})
	}

	// gRPC: raw contents carry every type (FP16 and BF16 have no typed field).
	le := binary.LittleEndian
	raw16 := func(vs ...uint16) []byte {
		var b []byte
		for _, v := range vs {
			b = le.AppendUint16(b, v)
		}
		return b
	}
	h := func(f float32) uint16 { return uint16(tensor.Float16From(f)) }
	bf := func(f float32) uint16 { return uint16(tensor.BFloat16From(f)) }
	var f64, u32, u64 []byte
	f64 = le.AppendUint64(le.AppendUint64(f64, 0x4010000000000000), 0x4000000000000000) // 4.0, 2.0
	u32 = le.AppendUint32(le.AppendUint32(u32, 4294967295), 8)
	u64 = le.AppendUint64(le.AppendUint64(u64, 18446744073709551615), 9)
	str := func(ss ...string) []byte {
		var b []byte
		for _, s := range ss {
			b = append(le.AppendUint32(b, uint32(len(s))), s...)
		}
		return b
	}
	req := &pb.ModelInferRequest{ModelName: "byo"}
	add := func(name, dt string, shape []int64, raw []byte) {
		req.Inputs = append(req.Inputs, &pb.ModelInferRequest_InferInputTensor{Name: name, Datatype: dt, Shape: shape})
		req.RawInputContents = append(req.RawInputContents, raw)
	}
	add("x_fp16", "FP16", []int64{2, 3}, raw16(h(0), h(0.5), h(-1), h(2), h(100), h(1000)))
	add("x_bf16", "BF16", []int64{2}, raw16(bf(1.5), bf(-3)))
	add("x_fp64", "FP64", []int64{2}, f64)
	add("x_int8", "INT8", []int64{2, 4}, []byte{1, 0xfe, 127, 0x80, 0, 5, 0xfb, 9})
	add("x_int16", "INT16", []int64{3}, raw16(0xfed4, 300, 0x8001))
	add("x_uint8", "UINT8", []int64{2, 4}, []byte{0, 1, 128, 255, 2, 3, 4, 5})
	add("x_uint16", "UINT16", []int64{2}, raw16(65535, 7))
	add("x_uint32", "UINT32", []int64{2}, u32)
	add("x_uint64", "UINT64", []int64{2}, u64)
	add("flags", "BOOL", []int64{2}, []byte{1, 0})
	add("words", "BYTES", []int64{2}, str("héllo", ""))
	add("scale", "FP32", []int64{}, le.AppendUint32(nil, 0x40200000)) // 2.5
	add("count", "INT64", []int64{}, le.AppendUint64(nil, 5))
	resp, err := client.ModelInfer(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.RawOutputContents) != len(resp.Outputs) {
		t.Fatalf("%d raw outputs for %d outputs", len(resp.RawOutputContents), len(resp.Outputs))
	}
	for i, o := range resp.Outputs {
		b := resp.RawOutputContents[i]
		switch o.Name {
		case "fp16_plus_one":
			if o.Datatype != "FP16" || fmt.Sprint(o.Shape) != "[2 3]" || tensor.Float16(le.Uint16(b[10:])).Float32() != 1001 {
				t.Errorf("fp16_plus_one: %s %v %x", o.Datatype, o.Shape, b)
			}
		case "total":
			if o.Datatype != "FP32" || len(o.Shape) != 0 || le.Uint32(b) != 0x41480000 { // 12.5
				t.Errorf("total: %s %v %x", o.Datatype, o.Shape, b)
			}
		case "uint64_same":
			if le.Uint64(b) != 18446744073709551615 {
				t.Errorf("uint64_same: %x", b)
			}
		case "words_same":
			if string(b) != string(str("héllo", "")) {
				t.Errorf("words_same: %q", b)
			}
		case "int16_abs":
			if fmt.Sprint(o.Shape) != "[3]" || le.Uint16(b[4:]) != 32767 {
				t.Errorf("int16_abs: %v %x", o.Shape, b)
			}
		}
	}

	// Typed contents: the narrow integers widened, FP16 refused with the way to send it.
	typed := &pb.ModelInferRequest{ModelName: "byo", Inputs: []*pb.ModelInferRequest_InferInputTensor{
		{Name: "x_int8", Datatype: "INT8", Shape: []int64{1, 4}, Contents: &pb.InferTensorContents{IntContents: []int32{1, 2, 3, 200}}},
	}}
	if _, err := client.ModelInfer(context.Background(), typed); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "int_contents[3] is 200, out of INT8's range [-128, 127]") {
		t.Errorf("INT8 out of range over gRPC: %v", err)
	}
	typed.Inputs = []*pb.ModelInferRequest_InferInputTensor{{Name: "x_fp16", Datatype: "FP16", Shape: []int64{2, 3}, Contents: &pb.InferTensorContents{Fp32Contents: []float32{1, 2, 3, 4, 5, 6}}}}
	if _, err := client.ModelInfer(context.Background(), typed); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "send its values as raw_input_contents") {
		t.Errorf("FP16 in typed contents: %v", err)
	}
	typed.Inputs = []*pb.ModelInferRequest_InferInputTensor{{Name: "scale", Datatype: "FP32", Shape: []int64{1}, Contents: &pb.InferTensorContents{Fp32Contents: []float32{1}}}}
	if _, err := client.ModelInfer(context.Background(), typed); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `input "scale": shape [1] has 1 dimensions, the model expects 0`) {
		t.Errorf("scalar with a dimension over gRPC: %v", err)
	}
}

// TestUnservableModelIsNotReady: a model with an output the runtime cannot
// read back fails to load, and readiness says which output and why.
func TestUnservableModelIsNotReady(t *testing.T) {
	_, _, err := serveModel(t, corpus.Unservable("fp16_dynamic.onnx"), "", map[string]string{})
	if err == nil || !strings.Contains(err.Error(), `output "y" is FP16 with dynamic shape [-1]`) {
		t.Fatalf("load: %v", err)
	}
}
