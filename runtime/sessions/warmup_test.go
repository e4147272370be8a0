package sessions

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/pilotlight/pilotlight/functions/tensor"
	"github.com/pilotlight/pilotlight/internal/corpus"
	"github.com/pilotlight/pilotlight/runtime/ort"
)

// vadInputs is one Silero VAD call: 512 samples at 16 kHz, zero state.
func vadInputs(sr int64) []*tensor.Tensor {
	return []*tensor.Tensor{
		{Name: "input", Datatype: tensor.FP32, Shape: []int64{1, 512}, Data: make([]float32, 512)},
		{Name: "sr", Datatype: tensor.INT64, Shape: []int64{}, Data: []int64{sr}},
		{Name: "h", Datatype: tensor.FP32, Shape: []int64{2, 1, 64}, Data: make([]float32, 128)},
		{Name: "c", Datatype: tensor.FP32, Shape: []int64{2, 1, 64}, Data: make([]float32, 128)},
	}
}

// TestWarmup: Silero VAD refuses the synthetic warm-up (one sample is too
// short for its padding), and still serves; a given warm-up warms every
// session; a given warm-up that fails fails the pool, naming its source.
func TestWarmup(t *testing.T) {
	model(t) // ONNX Runtime
	vad := corpus.Model(t, "silero_vad.onnx")
	opts := ort.Options{Provider: "cpu"}

	p, err := New(context.Background(), vad, 2, opts, Warmup{})
	if err != nil {
		t.Fatalf("a failed synthetic warm-up must not fail the pool: %v", err)
	}
	if !strings.Contains(p.Unwarmed, "Pad") {
		t.Errorf("Unwarmed = %q, want ONNX Runtime's reason (its Pad node)", p.Unwarmed)
	}
	if g := strings.Join(Guesses(p.Inputs()), "; "); !strings.Contains(g, "sr (INT64 []: scalar 0)") || !strings.Contains(g, "input (FP32 [-1 -1]: dynamic dimensions set to 1)") {
		t.Errorf("guesses %q, want sr and input named", g)
	}
	if out, _, err := p.Run(context.Background(), vadInputs(16000)); err != nil || len(out) != 3 {
		t.Errorf("unwarmed pool: %v, %d outputs", err, len(out))
	}
	p.Close()

	calls := 0
	p, err = New(context.Background(), vad, 2, opts, Warmup{Source: "warmup.json", Inputs: func(in, out []ort.IO) ([]*tensor.Tensor, error) {
		calls++
		if len(in) != 4 || len(out) != 3 {
			t.Errorf("warm-up decoder got %d inputs, %d outputs", len(in), len(out))
		}
		return vadInputs(16000), nil
	}})
	if err != nil || p.Unwarmed != "" || calls != 1 {
		t.Fatalf("given warm-up: %v, unwarmed %q, decoded %d times (want once)", err, p.Unwarmed, calls)
	}
	p.Close()

	_, err = New(context.Background(), vad, 2, opts, Warmup{Source: "bad.json", Inputs: func(in, out []ort.IO) ([]*tensor.Tensor, error) {
		return nil, errors.New(`missing input "sr"`)
	}})
	if err == nil || !strings.Contains(err.Error(), "bad.json") || !strings.Contains(err.Error(), `missing input "sr"`) {
		t.Errorf("undecodable warm-up: %v, want its file and problem named", err)
	}
	_, err = New(context.Background(), vad, 1, opts, Warmup{Source: "short.json", Inputs: func(in, out []ort.IO) ([]*tensor.Tensor, error) {
		ts := vadInputs(16000)
		ts[0].Shape, ts[0].Data = []int64{1, 1}, []float32{0}
		return ts, nil
	}})
	if err == nil || !strings.Contains(err.Error(), "short.json") || !strings.Contains(err.Error(), "Pad") {
		t.Errorf("a given warm-up the model refuses: %v, want the pool failed naming the file", err)
	}
}
