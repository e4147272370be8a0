package rollout

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"

	"google.golang.org/protobuf/proto"

	"github.com/pilotlight/pilotlight/functions"
	pb "github.com/pilotlight/pilotlight/proto/inference"
)

// protocol is how a shadowed request was sent, and so how its answers are
// read for comparing.
type protocol int

const (
	protocolFunction protocol = iota + 1 // the function's own JSON (POST /functions/{name})
	protocolV2REST                       // an Open Inference Protocol answer over REST (JSON outputs)
	protocolV2GRPC                       // an Open Inference Protocol answer over gRPC (a length-prefixed ModelInferResponse)
)

// grpcInferPath is the gRPC method a shadowed call was sent to.
const grpcInferPath = "/inference.GRPCInferenceService/ModelInfer"

func (p protocol) String() string {
	switch p {
	case protocolFunction:
		return "function"
	case protocolV2REST:
		return "v2-rest"
	case protocolV2GRPC:
		return "v2-grpc"
	}
	return "unknown"
}

// compare asks the function's comparer in the request's protocol. An
// error means an answer could not be read: incomparable, not failed.
func compare(c functions.Comparer, p protocol, primary, candidate []byte) (functions.Comparison, error) {
	if c == nil {
		c = functions.TensorComparer{}
	}
	switch p {
	case protocolFunction:
		return c.CompareJSON(primary, candidate)
	case protocolV2REST:
		a, err := v2Outputs(primary)
		if err != nil {
			return functions.Comparison{}, fmt.Errorf("serving answer: %w", err)
		}
		b, err := v2Outputs(candidate)
		if err != nil {
			return functions.Comparison{}, fmt.Errorf("candidate answer: %w", err)
		}
		return c.CompareOutputs(a, b)
	case protocolV2GRPC:
		a, err := grpcOutputs(primary)
		if err != nil {
			return functions.Comparison{}, fmt.Errorf("serving answer: %w", err)
		}
		b, err := grpcOutputs(candidate)
		if err != nil {
			return functions.Comparison{}, fmt.Errorf("candidate answer: %w", err)
		}
		return c.CompareOutputs(a, b)
	}
	return functions.Comparison{}, fmt.Errorf("answers of protocol %s are not compared", p)
}

// v2Outputs reads the outputs of a V2 REST answer: data flat or nested,
// numbers or booleans (BYTES outputs are not compared).
func v2Outputs(raw []byte) ([]functions.Output, error) {
	var doc struct {
		Outputs []struct {
			Name     string          `json:"name"`
			Datatype string          `json:"datatype"`
			Shape    []int64         `json:"shape"`
			Data     json.RawMessage `json:"data"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	if len(doc.Outputs) == 0 {
		return nil, errors.New("no outputs")
	}
	out := make([]functions.Output, 0, len(doc.Outputs))
	for _, o := range doc.Outputs {
		if o.Datatype == "BYTES" {
			return nil, fmt.Errorf("output %q: BYTES outputs are not compared", o.Name)
		}
		var data any
		if err := json.Unmarshal(o.Data, &data); err != nil {
			return nil, fmt.Errorf("output %q: %w", o.Name, err)
		}
		flat, err := flatten(data, nil)
		if err != nil {
			return nil, fmt.Errorf("output %q: %w", o.Name, err)
		}
		out = append(out, functions.Output{Name: o.Name, Shape: o.Shape, Data: flat})
	}
	return out, nil
}

func flatten(v any, dst []float64) ([]float64, error) {
	switch x := v.(type) {
	case float64:
		return append(dst, x), nil
	case bool:
		if x {
			return append(dst, 1), nil
		}
		return append(dst, 0), nil
	case []any:
		var err error
		for _, e := range x {
			if dst, err = flatten(e, dst); err != nil {
				return nil, err
			}
		}
		return dst, nil
	}
	return nil, fmt.Errorf("element %v is not a number", v)
}

// grpcOutputs reads the outputs of a gRPC ModelInferResponse message (with
// its 5-byte length prefix): typed contents or raw little-endian bytes.
func grpcOutputs(framed []byte) ([]functions.Output, error) {
	if len(framed) < pb.FrameHeaderBytes {
		return nil, errors.New("no message")
	}
	compressed, n := pb.ParseFrameHeader(framed[:pb.FrameHeaderBytes])
	if compressed || int(n) != len(framed)-pb.FrameHeaderBytes {
		return nil, fmt.Errorf("not one uncompressed message (%d bytes announced, %d sent)", n, len(framed)-pb.FrameHeaderBytes)
	}
	var resp pb.ModelInferResponse
	if err := proto.Unmarshal(framed[pb.FrameHeaderBytes:], &resp); err != nil {
		return nil, err
	}
	if len(resp.Outputs) == 0 {
		return nil, errors.New("no outputs")
	}
	out := make([]functions.Output, 0, len(resp.Outputs))
	for i, o := range resp.Outputs {
		var raw []byte
		if i < len(resp.RawOutputContents) {
			raw = resp.RawOutputContents[i]
		}
		data, err := grpcData(o, raw)
		if err != nil {
			return nil, fmt.Errorf("output %q: %w", o.Name, err)
		}
		out = append(out, functions.Output{Name: o.Name, Shape: o.Shape, Data: data})
	}
	return out, nil
}

func grpcData(o *pb.ModelInferResponse_InferOutputTensor, raw []byte) ([]float64, error) {
	var out []float64
	if raw == nil {
		c := o.Contents
		if c == nil {
			return nil, errors.New("no contents")
		}
		for _, v := range c.Fp32Contents {
			out = append(out, float64(v))
		}
		out = append(out, c.Fp64Contents...)
		for _, v := range c.IntContents {
			out = append(out, float64(v))
		}
		for _, v := range c.Int64Contents {
			out = append(out, float64(v))
		}
		for _, v := range c.UintContents {
			out = append(out, float64(v))
		}
		for _, v := range c.Uint64Contents {
			out = append(out, float64(v))
		}
		for _, v := range c.BoolContents {
			out = append(out, b2f(v))
		}
		return out, nil
	}
	size := map[string]int{"FP32": 4, "FP64": 8, "INT8": 1, "INT16": 2, "INT32": 4, "INT64": 8, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "BOOL": 1}[o.Datatype]
	if size == 0 {
		return nil, fmt.Errorf("%s outputs are not compared", o.Datatype)
	}
	if len(raw)%size != 0 {
		return nil, fmt.Errorf("%d raw bytes are not whole %s elements", len(raw), o.Datatype)
	}
	le := binary.LittleEndian
	for b := raw; len(b) > 0; b = b[size:] {
		var v float64
		switch o.Datatype {
		case "FP32":
			v = float64(math.Float32frombits(le.Uint32(b)))
		case "FP64":
			v = math.Float64frombits(le.Uint64(b))
		case "INT8":
			v = float64(int8(b[0]))
		case "INT16":
			v = float64(int16(le.Uint16(b)))
		case "INT32":
			v = float64(int32(le.Uint32(b)))
		case "INT64":
			v = float64(int64(le.Uint64(b)))
		case "UINT8", "BOOL":
			v = float64(b[0])
		case "UINT16":
			v = float64(le.Uint16(b))
		case "UINT32":
			v = float64(le.Uint32(b))
		case "UINT64":
			v = float64(le.Uint64(b))
		}
		out = append(out, v)
	}
	return out, nil
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
