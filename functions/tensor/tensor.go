// Package tensor is the value that crosses every boundary of an inference:
// client JSON decodes into it, the batcher concatenates it, ONNX Runtime
// consumes and produces it, and encoders turn it back into JSON. It is a leaf:
// it knows nothing of HTTP, ONNX Runtime or the platform.
package tensor

import (
	"fmt"
	"math"
)

// Datatype is an Open Inference Protocol (KServe V2) tensor datatype name.
type Datatype string

// The datatypes the runtime moves in and out of ONNX Runtime: every ONNX
// tensor element type that has an Open Inference Protocol name.
const (
	FP16   Datatype = "FP16"
	BF16   Datatype = "BF16"
	FP32   Datatype = "FP32"
	FP64   Datatype = "FP64"
	INT8   Datatype = "INT8"
	INT16  Datatype = "INT16"
	INT32  Datatype = "INT32"
	INT64  Datatype = "INT64"
	UINT8  Datatype = "UINT8"
	UINT16 Datatype = "UINT16"
	UINT32 Datatype = "UINT32"
	UINT64 Datatype = "UINT64"
	BOOL   Datatype = "BOOL"
	BYTES  Datatype = "BYTES"
)

// Datatypes lists every datatype the runtime serves, for messages and docs.
var Datatypes = []Datatype{FP16, BF16, FP32, FP64, INT8, INT16, INT32, INT64, UINT8, UINT16, UINT32, UINT64, BOOL, BYTES}

// DatatypeOf names the datatype a Data slice holds ("" for none).
func DatatypeOf(data any) Datatype {
	switch data.(type) {
	case []Float16:
		return FP16
	case []BFloat16:
		return BF16
	case []float32:
		return FP32
	case []float64:
		return FP64
	case []int8:
		return INT8
	case []int16:
		return INT16
	case []int32:
		return INT32
	case []int64:
		return INT64
	case []uint8:
		return UINT8
	case []uint16:
		return UINT16
	case []uint32:
		return UINT32
	case []uint64:
		return UINT64
	case []bool:
		return BOOL
	case []string:
		return BYTES
	}
	return ""
}

// Zeros is n zero values (0, false, "") of dt, or nil for an unknown datatype.
func Zeros(dt Datatype, n int) any {
	switch dt {
	case FP16:
		return make([]Float16, n)
	case BF16:
		return make([]BFloat16, n)
	case FP32:
		return make([]float32, n)
	case FP64:
		return make([]float64, n)
	case INT8:
		return make([]int8, n)
	case INT16:
		return make([]int16, n)
	case INT32:
		return make([]int32, n)
	case INT64:
		return make([]int64, n)
	case UINT8:
		return make([]uint8, n)
	case UINT16:
		return make([]uint16, n)
	case UINT32:
		return make([]uint32, n)
	case UINT64:
		return make([]uint64, n)
	case BOOL:
		return make([]bool, n)
	case BYTES:
		return make([]string, n)
	}
	return nil
}

// Tensor is a named, typed, shaped block of data. Data holds the slice
// DatatypeOf maps to Datatype ([]float32 for FP32, []Float16 for FP16, and
// so on), in row-major order. An empty Shape is a scalar (rank 0) of one value.
type Tensor struct {
	Name     string
	Datatype Datatype
	Shape    []int64
	Data     any
}

// Elements is the number of values the shape describes.
func Elements(shape []int64) (int64, error) {
	n := int64(1)
	for i, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("shape[%d] is %d: dimensions must be >= 0", i, d)
		}
		if d > 0 && n > math.MaxInt32/d {
			return 0, fmt.Errorf("shape %v has more than %d elements", shape, math.MaxInt32)
		}
		n *= d
	}
	return n, nil
}

// Len is the number of values held in Data.
func (t *Tensor) Len() int {
	switch d := t.Data.(type) {
	case []Float16:
		return len(d)
	case []BFloat16:
		return len(d)
	case []float32:
		return len(d)
	case []float64:
		return len(d)
	case []int8:
		return len(d)
	case []int16:
		return len(d)
	case []int32:
		return len(d)
	case []int64:
		return len(d)
	case []uint8:
		return len(d)
	case []uint16:
		return len(d)
	case []uint32:
		return len(d)
	case []uint64:
		return len(d)
	case []bool:
		return len(d)
	case []string:
		return len(d)
	}
	return 0
}

// Validate checks that Data's Go type matches Datatype and its length matches Shape.
func (t *Tensor) Validate() error {
	n, err := Elements(t.Shape)
	if err != nil {
		return fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	if DatatypeOf(t.Data) != t.Datatype {
		return fmt.Errorf("tensor %q: data of type %T does not hold datatype %s", t.Name, t.Data, t.Datatype)
	}
	if int64(t.Len()) != n {
		return fmt.Errorf("tensor %q: shape %v needs %d values, got %d", t.Name, t.Shape, n, t.Len())
	}
	return nil
}

// RowSize is the number of values in one row (the product of every dimension after the first).
func (t *Tensor) RowSize() int {
	n := 1
	for _, d := range t.Shape[1:] {
		n *= int(d)
	}
	return n
}

// Concat joins tensors of the same name, datatype and trailing shape along
// their first dimension. It is how the batcher makes one ONNX call of many requests.
func Concat(parts []*Tensor) (*Tensor, error) {
	if len(parts) == 0 {
		return nil, fmt.Errorf("concat of no tensors")
	}
	if len(parts) == 1 {
		return parts[0], nil
	}
	first := parts[0]
	rows := int64(0)
	for _, p := range parts {
		if p.Datatype != first.Datatype || len(p.Shape) != len(first.Shape) || len(p.Shape) == 0 {
			return nil, fmt.Errorf("tensor %q: cannot batch %s%v with %s%v", first.Name, first.Datatype, first.Shape, p.Datatype, p.Shape)
		}
		for i := 1; i < len(p.Shape); i++ {
			if p.Shape[i] != first.Shape[i] {
				return nil, fmt.Errorf("tensor %q: cannot batch shape %v with %v", first.Name, first.Shape, p.Shape)
			}
		}
		rows += p.Shape[0]
	}
	shape := append([]int64{rows}, first.Shape[1:]...)
	out := &Tensor{Name: first.Name, Datatype: first.Datatype, Shape: shape}
	if out.Data = concatData(first.Data, parts); out.Data == nil {
		return nil, fmt.Errorf("tensor %q: unsupported data %T", first.Name, first.Data)
	}
	return out, nil
}

func concatData(first any, parts []*Tensor) any {
	switch first.(type) {
	case []Float16:
		return concat[Float16](parts)
	case []BFloat16:
		return concat[BFloat16](parts)
	case []float32:
		return concat[float32](parts)
	case []float64:
		return concat[float64](parts)
	case []int8:
		return concat[int8](parts)
	case []int16:
		return concat[int16](parts)
	case []int32:
		return concat[int32](parts)
	case []int64:
		return concat[int64](parts)
	case []uint8:
		return concat[uint8](parts)
	case []uint16:
		return concat[uint16](parts)
	case []uint32:
		return concat[uint32](parts)
	case []uint64:
		return concat[uint64](parts)
	case []bool:
		return concat[bool](parts)
	case []string:
		return concat[string](parts)
	}
	return nil
}

func concat[T any](parts []*Tensor) []T {
	n := 0
	for _, p := range parts {
		n += p.Len()
	}
	out := make([]T, 0, n)
	for _, p := range parts {
		out = append(out, p.Data.([]T)...)
	}
	return out
}

// Rows returns rows [from, to) of t along the first dimension, sharing t's backing array.
func (t *Tensor) Rows(from, to int64) *Tensor {
	rs := int64(t.RowSize())
	shape := append([]int64{to - from}, t.Shape[1:]...)
	out := &Tensor{Name: t.Name, Datatype: t.Datatype, Shape: shape}
	out.Data = slice(t.Data, int(from*rs), int(to*rs))
	return out
}

// slice is data[a:b] with its capacity cut at b, for any Data slice.
func slice(data any, a, b int) any {
	switch d := data.(type) {
	case []Float16:
		return d[a:b:b]
	case []BFloat16:
		return d[a:b:b]
	case []float32:
		return d[a:b:b]
	case []float64:
		return d[a:b:b]
	case []int8:
		return d[a:b:b]
	case []int16:
		return d[a:b:b]
	case []int32:
		return d[a:b:b]
	case []int64:
		return d[a:b:b]
	case []uint8:
		return d[a:b:b]
	case []uint16:
		return d[a:b:b]
	case []uint32:
		return d[a:b:b]
	case []uint64:
		return d[a:b:b]
	case []bool:
		return d[a:b:b]
	case []string:
		return d[a:b:b]
	}
	return nil
}
