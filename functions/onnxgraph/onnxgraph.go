// Package onnxgraph builds small ONNX models from Go, deterministically: the
// functions that ship with Pilotlight (fraud, recommend) train in Go and export
// their models through it, and the same training run always marshals to the
// same bytes, so committed .onnx files can be checked by re-exporting them.
//
// It is deliberately tiny: initializers, nodes, inputs and outputs whose first
// dimension is the dynamic "batch" dimension (the runtime batches requests
// along it), and string metadata. It does not infer shapes or check graphs;
// ONNX Runtime does that when it loads the model.
package onnxgraph

import (
	"fmt"
	"sort"

	"github.com/advancedclimatesystems/gonnx/onnx"
	"google.golang.org/protobuf/proto"
)

// Versions written into every model.
const (
	IRVersion = 8  // ONNX IR version 8 (ONNX 1.10+), read by every ONNX Runtime since 1.10
	Opset     = 17 // default-domain operator set
	Producer  = "pilotlight"
)

// Batch marks a dimension as the dynamic batch dimension (dim_param "batch")
// in Input and Output shapes.
const Batch = -1

// BatchDim is the dim_param name of the dynamic batch dimension.
const BatchDim = "batch"

// Element types of inputs, outputs and initializers.
const (
	Float = onnx.TensorProto_FLOAT
	Int64 = onnx.TensorProto_INT64
)

// Graph accumulates one model. The zero value is not usable; call New.
type Graph struct {
	g       *onnx.GraphProto
	meta    map[string]string
	version int64
	doc     string
	n       int // counter for generated value names
	names   map[string]bool
	err     error
}

// New starts a graph called name.
func New(name string) *Graph {
	return &Graph{g: &onnx.GraphProto{Name: name}, meta: map[string]string{}, names: map[string]bool{}}
}

// SetModelVersion sets ModelProto.model_version.
func (b *Graph) SetModelVersion(v int64) { b.version = v }

// SetDoc sets the model's doc_string.
func (b *Graph) SetDoc(doc string) { b.doc = doc }

// Meta records a metadata_props entry (training seed, metrics, feature names).
// Entries are written sorted by key so the output does not depend on call order.
func (b *Graph) Meta(key, value string) { b.meta[key] = value }

func (b *Graph) define(name string) string {
	if b.names[name] && b.err == nil {
		b.err = fmt.Errorf("onnxgraph: value %q defined twice", name)
	}
	b.names[name] = true
	return name
}

// fresh returns a new, unused value name derived from op.
func (b *Graph) fresh(op string) string {
	for {
		b.n++
		name := fmt.Sprintf("%s_%d", op, b.n)
		if !b.names[name] {
			return name
		}
	}
}

// InitFloat adds a float32 initializer and returns its name.
func (b *Graph) InitFloat(name string, dims []int64, data []float32) string {
	b.checkLen(name, dims, len(data))
	b.g.Initializer = append(b.g.Initializer, &onnx.TensorProto{
		Name: name, Dims: append([]int64(nil), dims...), DataType: int32(Float), FloatData: append([]float32(nil), data...),
	})
	return b.define(name)
}

// InitInt64 adds an int64 initializer and returns its name.
func (b *Graph) InitInt64(name string, dims []int64, data []int64) string {
	b.checkLen(name, dims, len(data))
	b.g.Initializer = append(b.g.Initializer, &onnx.TensorProto{
		Name: name, Dims: append([]int64(nil), dims...), DataType: int32(Int64), Int64Data: append([]int64(nil), data...),
	})
	return b.define(name)
}

func (b *Graph) checkLen(name string, dims []int64, n int) {
	want := int64(1)
	for _, d := range dims {
		want *= d
	}
	if want != int64(n) && b.err == nil {
		b.err = fmt.Errorf("onnxgraph: initializer %q: dims %v need %d values, got %d", name, dims, want, n)
	}
}

func valueInfo(name string, elem onnx.TensorProto_DataType, dims []int64) *onnx.ValueInfoProto {
	shape := &onnx.TensorShapeProto{}
	for _, d := range dims {
		if d == Batch {
			shape.Dim = append(shape.Dim, &onnx.TensorShapeProto_Dimension{Value: &onnx.TensorShapeProto_Dimension_DimParam{DimParam: BatchDim}})
		} else {
			shape.Dim = append(shape.Dim, &onnx.TensorShapeProto_Dimension{Value: &onnx.TensorShapeProto_Dimension_DimValue{DimValue: d}})
		}
	}
	return &onnx.ValueInfoProto{Name: name, Type: &onnx.TypeProto{Value: &onnx.TypeProto_TensorType{TensorType: &onnx.TypeProto_Tensor{ElemType: int32(elem), Shape: shape}}}}
}

// Input declares a graph input; use Batch for the dynamic first dimension.
func (b *Graph) Input(name string, elem onnx.TensorProto_DataType, dims ...int64) string {
	b.g.Input = append(b.g.Input, valueInfo(name, elem, dims))
	return b.define(name)
}

// Output declares a graph output. The value must be produced by a node
// (see Node's outputs or Rename).
func (b *Graph) Output(name string, elem onnx.TensorProto_DataType, dims ...int64) {
	b.g.Output = append(b.g.Output, valueInfo(name, elem, dims))
}

// Attr is a node attribute.
type Attr = *onnx.AttributeProto

// AttrInt is an integer attribute.
func AttrInt(name string, v int64) Attr {
	return &onnx.AttributeProto{Name: name, Type: onnx.AttributeProto_INT, I: v}
}

// Node adds a node with explicit output names and returns them.
func (b *Graph) Node(op string, inputs, outputs []string, attrs ...Attr) []string {
	for _, o := range outputs {
		b.define(o)
	}
	b.g.Node = append(b.g.Node, &onnx.NodeProto{
		Name:      fmt.Sprintf("%s_node_%d", op, len(b.g.Node)),
		OpType:    op,
		Input:     append([]string(nil), inputs...),
		Output:    append([]string(nil), outputs...),
		Attribute: attrs,
	})
	return outputs
}

// Op adds a single-output node and returns its (generated) output name.
func (b *Graph) Op(op string, inputs []string, attrs ...Attr) string {
	return b.Node(op, inputs, []string{b.fresh(op)}, attrs...)[0]
}

// OpNamed adds a single-output node whose output is called out (for graph outputs).
func (b *Graph) OpNamed(out, op string, inputs []string, attrs ...Attr) string {
	return b.Node(op, inputs, []string{out}, attrs...)[0]
}

// Rename makes value x available under name out (an Identity node), so a
// computed value can become a named graph output.
func (b *Graph) Rename(x, out string) string { return b.OpNamed(out, "Identity", []string{x}) }

// MatMul is numpy-style matrix multiplication.
func (b *Graph) MatMul(x, y string) string { return b.Op("MatMul", []string{x, y}) }

// Add is broadcasting addition.
func (b *Graph) Add(x, y string) string { return b.Op("Add", []string{x, y}) }

// Sub is broadcasting subtraction.
func (b *Graph) Sub(x, y string) string { return b.Op("Sub", []string{x, y}) }

// Mul is broadcasting multiplication.
func (b *Graph) Mul(x, y string) string { return b.Op("Mul", []string{x, y}) }

// Sigmoid is the logistic function.
func (b *Graph) Sigmoid(x string) string { return b.Op("Sigmoid", []string{x}) }

// Relu is max(x, 0).
func (b *Graph) Relu(x string) string { return b.Op("Relu", []string{x}) }

// Sign is -1, 0 or 1 elementwise.
func (b *Graph) Sign(x string) string { return b.Op("Sign", []string{x}) }

// Gather takes slices of data along axis at indices.
func (b *Graph) Gather(data, indices string, axis int64) string {
	return b.Op("Gather", []string{data, indices}, AttrInt("axis", axis))
}

// ReduceSum sums over axes (opset 13+: axes are an int64 input).
func (b *Graph) ReduceSum(x string, keepDims bool, axes ...int64) string {
	k := int64(0)
	if keepDims {
		k = 1
	}
	ax := b.InitInt64(b.fresh("axes"), []int64{int64(len(axes))}, axes)
	return b.Op("ReduceSum", []string{x, ax}, AttrInt("keepdims", k))
}

// TopK returns the k largest values along the last axis, sorted descending,
// and their indices, under the names values and indices.
func (b *Graph) TopK(x string, k int64, values, indices string) (string, string) {
	kk := b.InitInt64(b.fresh("k"), []int64{1}, []int64{k})
	out := b.Node("TopK", []string{x, kk}, []string{values, indices}, AttrInt("axis", -1), AttrInt("largest", 1), AttrInt("sorted", 1))
	return out[0], out[1]
}

// Model assembles the ModelProto.
func (b *Graph) Model() (*onnx.ModelProto, error) {
	if b.err != nil {
		return nil, b.err
	}
	keys := make([]string, 0, len(b.meta))
	for k := range b.meta {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	props := make([]*onnx.StringStringEntryProto, len(keys))
	for i, k := range keys {
		props[i] = &onnx.StringStringEntryProto{Key: k, Value: b.meta[k]}
	}
	return &onnx.ModelProto{
		IrVersion:     IRVersion,
		OpsetImport:   []*onnx.OperatorSetIdProto{{Domain: "", Version: Opset}},
		ProducerName:  Producer,
		ModelVersion:  b.version,
		DocString:     b.doc,
		Graph:         b.g,
		MetadataProps: props,
	}, nil
}

// Marshal serialises the model deterministically: the same graph always
// gives the same bytes.
func (b *Graph) Marshal() ([]byte, error) {
	m, err := b.Model()
	if err != nil {
		return nil, err
	}
	raw, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("marshal onnx model %s: %w", b.g.Name, err)
	}
	return raw, nil
}
