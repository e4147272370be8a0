package server

import (
	"bytes"
	"encoding/binary"
	"math"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/functions/tensor"
	pb "github.com/pilotlight/pilotlight/proto/inference"
	"github.com/pilotlight/pilotlight/runtime/ort"
)

// fuzzModel has an input of each kind the decoder treats differently.
var fuzzModel = struct{ inputs, outputs []ort.IO }{
	inputs: []ort.IO{
		{Name: "x", Datatype: tensor.FP32, Shape: []int64{-1, 3}},
		{Name: "ids", Datatype: tensor.INT64, Shape: []int64{-1}},
		{Name: "tags", Datatype: tensor.BYTES, Shape: []int64{-1}},
	},
	outputs: []ort.IO{{Name: "y", Datatype: tensor.FP32, Shape: []int64{-1}}},
}

// grpcSeeds are ModelInferRequests worth starting from: good typed and raw
// requests, and the mistakes the issue names (huge shapes, raw lengths that
// do not match, unknown datatypes).
func grpcSeeds() [][]byte {
	le := binary.LittleEndian
	x := func(rows int64) *pb.ModelInferRequest_InferInputTensor {
		return &pb.ModelInferRequest_InferInputTensor{Name: "x", Datatype: "FP32", Shape: []int64{rows, 3}}
	}
	ids := &pb.ModelInferRequest_InferInputTensor{Name: "ids", Datatype: "INT64", Shape: []int64{1}}
	tags := &pb.ModelInferRequest_InferInputTensor{Name: "tags", Datatype: "BYTES", Shape: []int64{1}}
	typed := func() []*pb.ModelInferRequest_InferInputTensor {
		a, b, c := proto.Clone(x(1)).(*pb.ModelInferRequest_InferInputTensor), proto.Clone(ids).(*pb.ModelInferRequest_InferInputTensor), proto.Clone(tags).(*pb.ModelInferRequest_InferInputTensor)
		a.Contents = &pb.InferTensorContents{Fp32Contents: []float32{1, 2, 3}}
		b.Contents = &pb.InferTensorContents{Int64Contents: []int64{7}}
		c.Contents = &pb.InferTensorContents{BytesContents: [][]byte{[]byte("gold")}}
		return []*pb.ModelInferRequest_InferInputTensor{a, b, c}
	}
	var fx []byte
	for _, v := range []float32{1, 2, 3} {
		fx = le.AppendUint32(fx, math.Float32bits(v))
	}
	tag := le.AppendUint32(nil, 4)
	tag = append(tag, "gold"...)
	reqs := []*pb.ModelInferRequest{
		{ModelName: "m", Id: "a", Inputs: typed(), Outputs: []*pb.ModelInferRequest_InferRequestedOutputTensor{{Name: "y"}}},
		{ModelName: "m", Inputs: []*pb.ModelInferRequest_InferInputTensor{x(1), ids, tags}, RawInputContents: [][]byte{fx, le.AppendUint64(nil, 7), tag}},
		{ModelName: "m", Inputs: []*pb.ModelInferRequest_InferInputTensor{x(1), ids, tags}, RawInputContents: [][]byte{fx[:11], le.AppendUint64(nil, 7), tag}},
		{ModelName: "m", Inputs: []*pb.ModelInferRequest_InferInputTensor{x(1), ids, tags}, RawInputContents: [][]byte{fx, le.AppendUint64(nil, 7), le.AppendUint32(nil, 1<<31)}},
		{ModelName: "m", Inputs: []*pb.ModelInferRequest_InferInputTensor{x(99999999999), ids, tags}, RawInputContents: [][]byte{fx, fx, fx}},
		{ModelName: "m", Inputs: []*pb.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP8", Shape: []int64{1, 3}}}},
		{ModelName: "m", Inputs: typed()[:1]},
	}
	var out [][]byte
	for _, r := range reqs {
		b, err := proto.Marshal(r)
		if err != nil {
			panic(err)
		}
		out = append(out, b)
	}
	return append(out, nil, []byte{0x0a, 0xff}, []byte{0x2a, 0x7f, 0x0a}, []byte{0x0e})
}

// FuzzDecodeInferProto feeds arbitrary bytes to the gRPC request decoder:
// it must never panic, whatever it accepts must be tensors that match their
// shapes and the model, and raw contents it accepts must encode back to the
// same bytes.
func FuzzDecodeInferProto(f *testing.F) {
	for _, seed := range grpcSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, ts, rows, raw, err := decodeInferProto(body, fuzzModel.inputs, fuzzModel.outputs)
		if err != nil {
			return
		}
		if rows < 1 {
			t.Fatalf("accepted %d rows", rows)
		}
		if len(ts) != len(fuzzModel.inputs) {
			t.Fatalf("accepted %d tensors for %d inputs", len(ts), len(fuzzModel.inputs))
		}
		for i, x := range ts {
			if err := x.Validate(); err != nil {
				t.Fatalf("accepted an invalid tensor: %v", err)
			}
			if x.Shape[0] != int64(rows) {
				t.Fatalf("tensor %s has %d rows, request has %d", x.Name, x.Shape[0], rows)
			}
			if raw && !bytes.Equal(encodeRaw(x), req.RawInputContents[i]) {
				t.Fatalf("raw input %s does not encode back to the bytes sent", x.Name)
			}
		}
	})
}

func TestGRPCSeedsDecodeAsIntended(t *testing.T) {
	seeds := grpcSeeds()
	for i, wantOK := range []bool{true, true, false, false, false, false, false} {
		_, _, _, _, err := decodeInferProto(seeds[i], fuzzModel.inputs, fuzzModel.outputs)
		if (err == nil) != wantOK {
			t.Errorf("seed %d: err = %v, want ok = %v", i, err, wantOK)
		}
	}
}

// decodeInferProto is what the gRPC codec and ModelInfer do with a message:
// it unmarshals a
// ModelInferRequest and validates it with the same inputChecker, then
// turns each input's typed contents, or its raw_input_contents, into a
// tensor. raw reports that the request used raw contents (the response
// then answers with raw_output_contents). Every problem is a *functions.BadRequest.
func decodeInferProto(b []byte, inputs, outputs []ort.IO) (req *pb.ModelInferRequest, ts []*tensor.Tensor, rows int, raw bool, err error) {
	req = &pb.ModelInferRequest{}
	if err := proto.Unmarshal(b, req); err != nil {
		return nil, nil, 0, false, functions.Badf("malformed infer request: %v", err)
	}
	ts, rows, raw, err = inferInputs(req, inputs, outputs)
	return req, ts, rows, raw, err
}
