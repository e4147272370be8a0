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

// The datatypes the runtime moves in and out of ONNX Runtime.
const (
	FP32  Datatype = "FP32"
	FP64  Datatype = "FP64"
	INT64 Datatype = "INT64"
	INT32 Datatype = "INT32"
	BOOL  Datatype = "BOOL"
	BYTES Datatype = "BYTES"
)

// Tensor is a named, typed, shaped block of data. Data holds exactly one of
// []float32, []float64, []int64, []int32, []bool or []string, matching Datatype,
// in row-major order.
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
	case []float32:
		return len(d)
	case []float64:
		return len(d)
	case []int64:
		return len(d)
	case []int32:
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
	ok := false
	switch t.Data.(type) {
	case []float32:
		ok = t.Datatype == FP32
	case []float64:
		ok = t.Datatype == FP64
	case []int64:
		ok = t.Datatype == INT64
	case []int32:
		ok = t.Datatype == INT32
	case []bool:
		ok = t.Datatype == BOOL
	case []string:
		ok = t.Datatype == BYTES
	}
	if !ok {
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
	switch first.Data.(type) {
	case []float32:
		out.Data = concat[float32](parts)
	case []float64:
		out.Data = concat[float64](parts)
	case []int64:
		out.Data = concat[int64](parts)
	case []int32:
		out.Data = concat[int32](parts)
	case []bool:
		out.Data = concat[bool](parts)
	case []string:
		out.Data = concat[string](parts)
	default:
		return nil, fmt.Errorf("tensor %q: unsupported data %T", first.Name, first.Data)
	}
	return out, nil
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
	a, b := from*rs, to*rs
	switch d := t.Data.(type) {
	case []float32:
		out.Data = d[a:b:b]
	case []float64:
		out.Data = d[a:b:b]
	case []int64:
		out.Data = d[a:b:b]
	case []int32:
		out.Data = d[a:b:b]
	case []bool:
		out.Data = d[a:b:b]
	case []string:
		out.Data = d[a:b:b]
	}
	return out
}
