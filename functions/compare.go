package functions

import (
	"bytes"
	"fmt"
	"math"
	"slices"
)

// TensorTolerance is the largest output difference of two tensor answers
// that still counts as agreement.
const TensorTolerance = 1e-4

// Comparison is how two answers to the same request compare: Agreement in
// [0, 1] (the share of decisions, items or outputs that agree) and Delta,
// the function's score difference (|Δ probability|, 1 - overlap, max |Δ
// output|).
type Comparison struct {
	Agreement float64
	Delta     float64
}

// Output is one output tensor of an Open Inference Protocol answer, as a
// comparison reads it: the caller decodes the answer (REST JSON or gRPC)
// and widens every element to float64 (booleans 0 or 1).
type Output struct {
	Name  string
	Shape []int64
	Data  []float64
}

// Comparer is an optional interface of a Handler: how a candidate
// revision's answer to a request compares with the serving revision's
// answer to the same request, for shadow rollouts. It is asked in the
// protocol the request was sent in: the function's own JSON, or the V2
// output tensors. An error means the answers could not be read, which is
// the platform's problem and not evidence against the candidate.
type Comparer interface {
	CompareJSON(primary, candidate []byte) (Comparison, error)
	CompareOutputs(primary, candidate []Output) (Comparison, error)
}

// ComparerFor is the Comparer of m's handler, or, for a handler without
// one (and the tensor handler), TensorComparer: outputs agree within
// TensorTolerance, function answers when they are the same bytes.
func ComparerFor(m *Manifest) Comparer {
	h, err := NewHandler(m)
	if c, ok := h.(Comparer); ok && err == nil {
		return c
	}
	return TensorComparer{}
}

// TensorComparer compares answers output by output name: Delta is the
// largest absolute difference of any element, and the answers agree when it
// is within TensorTolerance and every output's shape matches.
type TensorComparer struct{}

// CompareOutputs implements Comparer.
func (TensorComparer) CompareOutputs(primary, candidate []Output) (Comparison, error) {
	byName := make(map[string]Output, len(candidate))
	for _, o := range candidate {
		byName[o.Name] = o
	}
	var maxDiff float64
	for _, o := range primary {
		c, ok := byName[o.Name]
		if !ok || len(c.Data) != len(o.Data) || !slices.Equal(c.Shape, o.Shape) {
			return Comparison{Agreement: 0, Delta: math.Inf(1)}, nil
		}
		for i := range o.Data {
			maxDiff = max(maxDiff, math.Abs(o.Data[i]-c.Data[i]))
		}
	}
	agree := 0.0
	if maxDiff <= TensorTolerance {
		agree = 1
	}
	return Comparison{Agreement: agree, Delta: maxDiff}, nil
}

// CompareJSON implements Comparer: identical answers agree.
func (TensorComparer) CompareJSON(primary, candidate []byte) (Comparison, error) {
	if bytes.Equal(bytes.TrimSpace(primary), bytes.TrimSpace(candidate)) {
		return Comparison{Agreement: 1}, nil
	}
	return Comparison{Agreement: 0, Delta: 1}, nil
}

// OutputNamed finds the output called name, for comparers that read one.
func OutputNamed(outs []Output, name string) (Output, error) {
	for _, o := range outs {
		if o.Name == name {
			return o, nil
		}
	}
	return Output{}, fmt.Errorf("no output %q", name)
}
