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
