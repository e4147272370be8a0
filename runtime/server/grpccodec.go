package server

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/functions/tensor"
	pb "github.com/pilotlight/pilotlight/proto/inference"
	"github.com/pilotlight/pilotlight/runtime/ort"
)

// inferInputs validates an unmarshalled ModelInferRequest and turns its inputs into tensors.
func inferInputs(req *pb.ModelInferRequest, inputs, outputs []ort.IO) (ts []*tensor.Tensor, rows int, raw bool, err error) {
	raw = len(req.RawInputContents) > 0
	if raw && len(req.RawInputContents) != len(req.Inputs) {
		return nil, 0, false, functions.Badf("raw_input_contents has %d entries for %d inputs; give one per input, in order, or use contents", len(req.RawInputContents), len(req.Inputs))
	}
	chk, err := newInputChecker(inputs, len(req.Inputs))
	if err != nil {
		return nil, 0, false, err
	}
	for i, in := range req.Inputs {
		io, n, err := chk.check(i, in.Name, in.Datatype, in.Shape)
		if err != nil {
			return nil, 0, false, err
		}
		t := &tensor.Tensor{Name: in.Name, Datatype: io.Datatype, Shape: in.Shape}
		if raw {
			if in.Contents != nil {
				return nil, 0, false, functions.Badf("input %q: both contents and raw_input_contents are set; send one", in.Name)
			}
			t.Data, err = decodeRaw(req.RawInputContents[i], io.Datatype, n)
		} else {
			t.Data, err = decodeContents(in.Contents, io.Datatype, n)
		}
		if err != nil {
			return nil, 0, false, functions.Badf("input %q: %v", in.Name, err)
		}
		if err := t.Validate(); err != nil {
			return nil, 0, false, functions.Badf("%v", err)
		}
		ts = append(ts, t)
	}
	wanted := make([]string, len(req.Outputs))
	for i, o := range req.Outputs {
		wanted[i] = o.Name
	}
	if rows, err = chk.done(outputs, wanted); err != nil {
		return nil, 0, false, err
	}
	return ts, rows, raw, nil
}

// decodeContents takes the typed contents field that belongs to dt (the
// slice itself: protobuf already decoded it) and refuses the others.
func decodeContents(c *pb.InferTensorContents, dt tensor.Datatype, want int) (any, error) {
	if c == nil {
		return nil, fmt.Errorf("contents are required (or raw_input_contents)")
	}
	counts := map[string]int{
		"bool_contents": len(c.BoolContents), "int_contents": len(c.IntContents), "int64_contents": len(c.Int64Contents),
		"uint_contents": len(c.UintContents), "uint64_contents": len(c.Uint64Contents), "fp32_contents": len(c.Fp32Contents),
		"fp64_contents": len(c.Fp64Contents), "bytes_contents": len(c.BytesContents),
	}
	var field string
	var data any
	var got int
	switch dt {
	case tensor.FP32:
		field, data, got = "fp32_contents", c.Fp32Contents, len(c.Fp32Contents)
		for _, v := range c.Fp32Contents {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return nil, fmt.Errorf("%v is not a finite FP32 number", v)
			}
		}
	case tensor.FP64:
		field, data, got = "fp64_contents", c.Fp64Contents, len(c.Fp64Contents)
		for _, v := range c.Fp64Contents {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return nil, fmt.Errorf("%v is not a finite FP64 number", v)
			}
		}
	case tensor.INT64:
		field, data, got = "int64_contents", c.Int64Contents, len(c.Int64Contents)
	case tensor.INT32:
		field, data, got = "int_contents", c.IntContents, len(c.IntContents)
	case tensor.INT8, tensor.INT16:
		// The protocol carries the narrow integers widened: int_contents.
		d, err := narrowInts(c.IntContents, dt)
		if err != nil {
			return nil, err
		}
		field, data, got = "int_contents", d, len(c.IntContents)
	case tensor.UINT8, tensor.UINT16, tensor.UINT32:
		d, err := narrowUints(c.UintContents, dt)
		if err != nil {
			return nil, err
		}
		field, data, got = "uint_contents", d, len(c.UintContents)
	case tensor.UINT64:
		field, data, got = "uint64_contents", c.Uint64Contents, len(c.Uint64Contents)
	case tensor.FP16, tensor.BF16:
		return nil, fmt.Errorf("%s has no typed contents field in the Open Inference Protocol: send its values as raw_input_contents (2 bytes each, little-endian)", dt)
	case tensor.BOOL:
		field, data, got = "bool_contents", c.BoolContents, len(c.BoolContents)
	case tensor.BYTES:
		strs := make([]string, len(c.BytesContents))
		for i, b := range c.BytesContents {
			strs[i] = string(b)
		}
		field, data, got = "bytes_contents", strs, len(strs)
	default:
		return nil, fmt.Errorf("datatype %s is not served", dt)
	}
	for name, n := range counts {
		if name != field && n > 0 {
			return nil, fmt.Errorf("%s data goes in contents.%s, not contents.%s", dt, field, name)
		}
	}
	if got != want {
		return nil, fmt.Errorf("data has %d values, shape needs %d", got, want)
	}
	return data, nil
}

func narrowInts(vs []int32, dt tensor.Datatype) (any, error) {
	lo, hi := int32(math.MinInt8), int32(math.MaxInt8)
	if dt == tensor.INT16 {
		lo, hi = math.MinInt16, math.MaxInt16
	}
	for i, v := range vs {
		if v < lo || v > hi {
			return nil, fmt.Errorf("int_contents[%d] is %d, out of %s's range [%d, %d]", i, v, dt, lo, hi)
		}
	}
	if dt == tensor.INT8 {
		return convert[int8](vs), nil
	}
	return convert[int16](vs), nil
}

func narrowUints(vs []uint32, dt tensor.Datatype) (any, error) {
	hi := uint32(math.MaxUint32)
	switch dt {
	case tensor.UINT8:
		hi = math.MaxUint8
	case tensor.UINT16:
		hi = math.MaxUint16
	}
	for i, v := range vs {
		if v > hi {
			return nil, fmt.Errorf("uint_contents[%d] is %d, out of %s's range [0, %d]", i, v, dt, hi)
		}
	}
	switch dt {
	case tensor.UINT8:
		return convert[uint8](vs), nil
	case tensor.UINT16:
		return convert[uint16](vs), nil
	}
	return vs, nil
}

func convert[T, F int8 | int16 | int32 | uint8 | uint16 | uint32](vs []F) []T {
	out := make([]T, len(vs))
	for i, v := range vs {
		out[i] = T(v)
	}
	return out
}

// rawElementBytes is the size of one value in raw contents (0: BYTES,
// whose values are each a 4-byte little-endian length and the bytes).
func rawElementBytes(dt tensor.Datatype) int {
	switch dt {
	case tensor.FP32, tensor.INT32, tensor.UINT32:
		return 4
	case tensor.FP64, tensor.INT64, tensor.UINT64:
		return 8
	case tensor.FP16, tensor.BF16, tensor.INT16, tensor.UINT16:
		return 2
	case tensor.BOOL, tensor.INT8, tensor.UINT8:
		return 1
	}
	return 0
}

// decodeRaw reads raw contents: want values, little-endian, row-major, as
// the Open Inference Protocol lays them out.
func decodeRaw(b []byte, dt tensor.Datatype, want int) (any, error) {
	if size := rawElementBytes(dt); size > 0 && len(b) != want*size {
		return nil, fmt.Errorf("raw contents are %d bytes; %s with %d values needs %d", len(b), dt, want, want*size)
	}
	le := binary.LittleEndian
	switch dt {
	case tensor.FP32:
		out := make([]float32, want)
		for i := range out {
			v := math.Float32frombits(le.Uint32(b[4*i:]))
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return nil, fmt.Errorf("raw value %d is not a finite FP32 number", i)
			}
			out[i] = v
		}
		return out, nil
	case tensor.FP64:
		out := make([]float64, want)
		for i := range out {
			v := math.Float64frombits(le.Uint64(b[8*i:]))
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return nil, fmt.Errorf("raw value %d is not a finite FP64 number", i)
			}
			out[i] = v
		}
		return out, nil
	case tensor.INT64:
		out := make([]int64, want)
		for i := range out {
			out[i] = int64(le.Uint64(b[8*i:]))
		}
		return out, nil
	case tensor.INT32:
		out := make([]int32, want)
		for i := range out {
			out[i] = int32(le.Uint32(b[4*i:]))
		}
		return out, nil
	case tensor.UINT64:
		out := make([]uint64, want)
		for i := range out {
			out[i] = le.Uint64(b[8*i:])
		}
		return out, nil
	case tensor.UINT32:
		out := make([]uint32, want)
		for i := range out {
			out[i] = le.Uint32(b[4*i:])
		}
		return out, nil
	case tensor.INT16:
		out := make([]int16, want)
		for i := range out {
			out[i] = int16(le.Uint16(b[2*i:]))
		}
		return out, nil
	case tensor.UINT16:
		out := make([]uint16, want)
		for i := range out {
			out[i] = le.Uint16(b[2*i:])
		}
		return out, nil
	case tensor.INT8:
		out := make([]int8, want)
		for i := range out {
			out[i] = int8(b[i])
		}
		return out, nil
	case tensor.UINT8:
		out := make([]uint8, want)
		copy(out, b)
		return out, nil
	case tensor.FP16, tensor.BF16:
		vals := make([]uint16, want)
		for i := range vals {
			vals[i] = le.Uint16(b[2*i:])
		}
		for i, v := range vals {
			var f float32
			if dt == tensor.FP16 {
				f = tensor.Float16(v).Float32()
			} else {
				f = tensor.BFloat16(v).Float32()
			}
			if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
				return nil, fmt.Errorf("raw value %d is not a finite %s number", i, dt)
			}
		}
		if dt == tensor.FP16 {
			return convert16[tensor.Float16](vals), nil
		}
		return convert16[tensor.BFloat16](vals), nil
	case tensor.BOOL:
		out := make([]bool, want)
		for i, c := range b {
			if c > 1 {
				return nil, fmt.Errorf("raw value %d is %d; BOOL is one byte, 0 or 1", i, c)
			}
			out[i] = c == 1
		}
		return out, nil
	case tensor.BYTES:
		out := make([]string, 0, min(want, len(b)/4))
		for len(b) > 0 {
			if len(out) == want {
				return nil, fmt.Errorf("raw contents hold more than the %d values the shape needs", want)
			}
			if len(b) < 4 {
				return nil, fmt.Errorf("raw BYTES value %d: %d bytes left, a length prefix needs 4", len(out), len(b))
			}
			n := le.Uint32(b)
			if uint64(n) > uint64(len(b)-4) {
				return nil, fmt.Errorf("raw BYTES value %d claims %d bytes, %d are left", len(out), n, len(b)-4)
			}
			out = append(out, string(b[4:4+n]))
			b = b[4+n:]
		}
		if len(out) != want {
			return nil, fmt.Errorf("raw contents hold %d values, shape needs %d", len(out), want)
		}
		return out, nil
	}
	return nil, fmt.Errorf("datatype %s is not served", dt)
}

func convert16[T ~uint16](vs []uint16) []T {
	out := make([]T, len(vs))
	for i, v := range vs {
		out[i] = T(v)
	}
	return out
}

// needsRaw reports whether an output can only travel as raw contents: the
// 16-bit floats have no typed contents field in the protocol.
func needsRaw(t *tensor.Tensor) bool { return t.Datatype == tensor.FP16 || t.Datatype == tensor.BF16 }

// outputTensor describes t as a ModelInferResponse output; with raw false
// its values go in contents, else they are appended to raws.
func outputTensor(t *tensor.Tensor, raw bool, raws [][]byte) (*pb.ModelInferResponse_InferOutputTensor, [][]byte) {
	o := &pb.ModelInferResponse_InferOutputTensor{Name: t.Name, Datatype: string(t.Datatype), Shape: t.Shape}
	if raw {
		return o, append(raws, encodeRaw(t))
	}
	c := &pb.InferTensorContents{}
	switch d := t.Data.(type) {
	case []float32:
		c.Fp32Contents = d
	case []float64:
		c.Fp64Contents = d
	case []int64:
		c.Int64Contents = d
	case []int32:
		c.IntContents = d
	case []int16:
		c.IntContents = widen[int32](d)
	case []int8:
		c.IntContents = widen[int32](d)
	case []uint32:
		c.UintContents = d
	case []uint16:
		c.UintContents = widen[uint32](d)
	case []uint8:
		c.UintContents = widen[uint32](d)
	case []uint64:
		c.Uint64Contents = d
	case []bool:
		c.BoolContents = d
	case []string:
		c.BytesContents = make([][]byte, len(d))
		for i, s := range d {
			c.BytesContents[i] = []byte(s)
		}
	}
	o.Contents = c
	return o, raws
}

func widen[T int32 | uint32, F int8 | int16 | uint8 | uint16](vs []F) []T {
	out := make([]T, len(vs))
	for i, v := range vs {
		out[i] = T(v)
	}
	return out
}

// encodeRaw lays t's values out as decodeRaw reads them.
func encodeRaw(t *tensor.Tensor) []byte {
	le := binary.LittleEndian
	switch d := t.Data.(type) {
	case []float32:
		b := make([]byte, 0, 4*len(d))
		for _, v := range d {
			b = le.AppendUint32(b, math.Float32bits(v))
		}
		return b
	case []float64:
		b := make([]byte, 0, 8*len(d))
		for _, v := range d {
			b = le.AppendUint64(b, math.Float64bits(v))
		}
		return b
	case []int64:
		b := make([]byte, 0, 8*len(d))
		for _, v := range d {
			b = le.AppendUint64(b, uint64(v))
		}
		return b
	case []int32:
		b := make([]byte, 0, 4*len(d))
		for _, v := range d {
			b = le.AppendUint32(b, uint32(v))
		}
		return b
	case []uint64:
		b := make([]byte, 0, 8*len(d))
		for _, v := range d {
			b = le.AppendUint64(b, v)
		}
		return b
	case []uint32:
		b := make([]byte, 0, 4*len(d))
		for _, v := range d {
			b = le.AppendUint32(b, v)
		}
		return b
	case []int16:
		return append16(d)
	case []uint16:
		return append16(d)
	case []tensor.Float16:
		return append16(d)
	case []tensor.BFloat16:
		return append16(d)
	case []int8:
		b := make([]byte, len(d))
		for i, v := range d {
			b[i] = byte(v)
		}
		return b
	case []uint8:
		return append([]byte(nil), d...)
	case []bool:
		b := make([]byte, len(d))
		for i, v := range d {
			if v {
				b[i] = 1
			}
		}
		return b
	case []string:
		var b []byte
		for _, s := range d {
			b = le.AppendUint32(b, uint32(len(s)))
			b = append(b, s...)
		}
		return b
	}
	return nil
}

func append16[T ~int16 | ~uint16](d []T) []byte {
	b := make([]byte, 0, 2*len(d))
	for _, v := range d {
		b = binary.LittleEndian.AppendUint16(b, uint16(v))
	}
	return b
}
