package testbin

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/functions/onnxgraph"
)

// WriteMatMulFunction writes, in a temporary directory, a tensor function
// named name whose one revision (name-00001) multiplies its input "x"
// [batch, n] by an n×n float32 weights matrix (4n² bytes): a model large
// enough that a process's RSS shows its sessions loading and unloading.
func WriteMatMulFunction(t testing.TB, name string, n int64, sessions int) *functions.Manifest {
	t.Helper()
	b, err := matMulModel(n)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "model.onnx"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return WriteFunction(t, dir, fmt.Sprintf("name: %s\nhandler: tensor\nrevisions:\n  - name: %s-00001\n    model: model.onnx\nruntime:\n  sessions: %d\n", name, name, sessions))
}

// matMulModels holds the models built so far, by n: building one takes
// seconds, and the functions of a test differ only in name.
var matMulModels sync.Map

func matMulModel(n int64) ([]byte, error) {
	if b, ok := matMulModels.Load(n); ok {
		return b.([]byte), nil
	}
	g := onnxgraph.New("matmul")
	x := g.Input("x", onnxgraph.Float, onnxgraph.Batch, n)
	w := make([]float32, n*n)
	for i := range w {
		w[i] = float32(i%7) / 7
	}
	g.Rename(g.MatMul(x, g.InitFloat("w", []int64{n, n}, w)), "y")
	g.Output("y", onnxgraph.Float, onnxgraph.Batch, n)
	b, err := g.Marshal()
	if err == nil {
		matMulModels.Store(n, b)
	}
	return b, err
}

// WriteSlowFunction writes, in a temporary directory, a tensor function
// named name (one revision, name-00001, one session) whose model is slow
// by construction: its input "x" [batch, n] goes through depth matrix
// products by the same n×n weights, so a call costs 2·depth·n² floating
// point operations a row and a large batch runs for a long time inside
// ONNX Runtime, and its output "y" [batch, 1] is each row's sum, so the
// answer is small. Every weight is 1/n: each product replaces a row by its
// mean in every column, so y is n times the row's mean, exactly (a row of
// twos sums to 2n), with no value growing or decaying into denormals.
func WriteSlowFunction(t testing.TB, name string, n int64, depth int) *functions.Manifest {
	t.Helper()
	g := onnxgraph.New("slow")
	x := g.Input("x", onnxgraph.Float, onnxgraph.Batch, n)
	w := make([]float32, n*n)
	for i := range w {
		w[i] = 1 / float32(n)
	}
	weights := g.InitFloat("w", []int64{n, n}, w)
	for range depth {
		x = g.MatMul(x, weights)
	}
	g.Rename(g.ReduceSum(x, true, 1), "y")
	g.Output("y", onnxgraph.Float, onnxgraph.Batch, 1)
	b, err := g.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "model.onnx"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return WriteFunction(t, dir, fmt.Sprintf("name: %s\nhandler: tensor\nrevisions:\n  - name: %s-00001\n    model: model.onnx\nruntime:\n  sessions: 1\n", name, name))
}
