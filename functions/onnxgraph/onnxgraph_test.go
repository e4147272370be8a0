package onnxgraph_test

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/advancedclimatesystems/gonnx/onnx"
	"google.golang.org/protobuf/proto"

	"github.com/pilotlight/pilotlight/functions/onnxgraph"
	"github.com/pilotlight/pilotlight/functions/tensor"
	"github.com/pilotlight/pilotlight/runtime/ort"
)

// build is y = relu(x·W + b) summed per row, plus top-2 of x·W, with metadata
// added in an order that must not matter.
func build(metaOrder []string) *onnxgraph.Graph {
	g := onnxgraph.New("test")
	for _, k := range metaOrder {
		g.Meta(k, "v-"+k)
	}
	x := g.Input("x", onnxgraph.Float, onnxgraph.Batch, 3)
	w := g.InitFloat("w", []int64{3, 2}, []float32{1, 0, 0, 1, 1, -1})
	b := g.InitFloat("b", []int64{2}, []float32{0.5, -0.5})
	xw := g.MatMul(x, w)
	g.Rename(g.ReduceSum(g.Relu(g.Add(xw, b)), true, 1), "y")
	g.TopK(xw, 2, "top", "idx")
	g.Output("y", onnxgraph.Float, onnxgraph.Batch, 1)
	g.Output("top", onnxgraph.Float, onnxgraph.Batch, 2)
	g.Output("idx", onnxgraph.Int64, onnxgraph.Batch, 2)
	return g
}

func TestMarshalIsDeterministic(t *testing.T) {
	a, err := build([]string{"seed", "auc"}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	b, err := build([]string{"auc", "seed"}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("same graph marshalled to different bytes")
	}
	var m onnx.ModelProto
	if err := proto.Unmarshal(a, &m); err != nil {
		t.Fatal(err)
	}
	if m.IrVersion != onnxgraph.IRVersion || m.OpsetImport[0].Version != onnxgraph.Opset || len(m.MetadataProps) != 2 || m.MetadataProps[0].Key != "auc" {
		t.Fatalf("model header %v %v %v", m.IrVersion, m.OpsetImport, m.MetadataProps)
	}
}

// TestRunsInONNXRuntime loads a built model with a dynamic batch dimension
// and checks its arithmetic.
func TestRunsInONNXRuntime(t *testing.T) {
	raw, err := build(nil).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "m.onnx")
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := ort.NewSession(path, ort.Options{Provider: ort.ProviderCPU})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, io := range s.Inputs() {
		if io.Shape[0] != -1 {
			t.Errorf("input %s shape %v: first dimension not dynamic", io.Name, io.Shape)
		}
	}
	x := &tensor.Tensor{Name: "x", Datatype: tensor.FP32, Shape: []int64{2, 3}, Data: []float32{1, 2, 3, -1, 0, 0}}
	out, err := s.Run([]*tensor.Tensor{x})
	if err != nil {
		t.Fatal(err)
	}
	// Row 0: xW = [4, -1], +b = [4.5, -1.5], relu sum 4.5. Row 1: xW = [-1, 0], +b = [-0.5, -0.5] -> 0.
	if got := out["y"].Data.([]float32); !slices.Equal(got, []float32{4.5, 0}) {
		t.Errorf("y = %v, want [4.5 0]", got)
	}
	if got := out["top"].Data.([]float32); !slices.Equal(got, []float32{4, -1, 0, -1}) {
		t.Errorf("top = %v", got)
	}
	if got := out["idx"].Data.([]int64); !slices.Equal(got, []int64{0, 1, 1, 0}) {
		t.Errorf("idx = %v", got)
	}
}

func TestErrors(t *testing.T) {
	g := onnxgraph.New("bad")
	g.InitFloat("w", []int64{2, 2}, []float32{1, 2, 3})
	if _, err := g.Marshal(); err == nil {
		t.Error("initializer with wrong length marshalled")
	}
	g = onnxgraph.New("dup")
	g.Input("x", onnxgraph.Float, onnxgraph.Batch)
	g.InitFloat("x", []int64{1}, []float32{1})
	if _, err := g.Marshal(); err == nil {
		t.Error("value defined twice marshalled")
	}
}
