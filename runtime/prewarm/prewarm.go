// Package prewarm readies an idle warm-pool process: it runs one inference
// of a small built-in model that uses the operators Pilotlight's models use
// (Gather, MatMul, Add, Sigmoid, TopK), so ONNX Runtime's one-time start-up
// cost is paid before any revision is asked for, not during its cold start.
package prewarm

import (
	"fmt"

	"github.com/pilotlight/pilotlight/functions/onnxgraph"
	"github.com/pilotlight/pilotlight/functions/tensor"
	"github.com/pilotlight/pilotlight/runtime/ort"
)

// Run builds the model and runs it once through ONNX Runtime.
func Run() error {
	g := onnxgraph.New("pilotlight-prewarm")
	ids := g.Input("ids", onnxgraph.Int64, onnxgraph.Batch)
	x := g.Input("x", onnxgraph.Float, onnxgraph.Batch, 4)
	emb := g.InitFloat("emb", []int64{3, 4}, []float32{1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0})
	w := g.InitFloat("w", []int64{4, 3}, []float32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
	b := g.InitFloat("b", []int64{3}, []float32{0.1, 0.2, 0.3})
	h := g.Add(g.Gather(emb, ids, 0), x)
	y := g.Sigmoid(g.Add(g.MatMul(h, w), b))
	vals, idx := g.TopK(y, 2, "top", "top_idx")
	g.Output(vals, onnxgraph.Float, onnxgraph.Batch, 2)
	g.Output(idx, onnxgraph.Int64, onnxgraph.Batch, 2)
	model, err := g.Marshal()
	if err != nil {
		return fmt.Errorf("build prewarm model: %w", err)
	}
	return ort.Prewarm(model, []*tensor.Tensor{
		{Name: "ids", Datatype: tensor.INT64, Shape: []int64{2}, Data: []int64{0, 2}},
		{Name: "x", Datatype: tensor.FP32, Shape: []int64{2, 4}, Data: make([]float32, 8)},
	})
}
