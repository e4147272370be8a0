package ort_test

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/pilotlight/pilotlight/functions/tensor"
	"github.com/pilotlight/pilotlight/internal/corpus"
	"github.com/pilotlight/pilotlight/runtime/ort"
)

// TestEveryDatatypeRoundTrips runs the typed corpus model (every V2
// datatype, rank-0 scalars in and out) and checks each output's type,
// shape and values: the values go into ONNX Runtime and come back through
// a different operator per type, so a wrong byte layout shows.
func TestEveryDatatypeRoundTrips(t *testing.T) {
	if _, err := ort.Init(); err != nil {
		t.Fatalf("ONNX Runtime must load here (make ort): %v", err)
	}
	s, err := ort.NewSession(corpus.Typed(), ort.Options{Provider: "cpu"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	h := func(fs ...float32) []tensor.Float16 {
		out := make([]tensor.Float16, len(fs))
		for i, f := range fs {
			out[i] = tensor.Float16From(f)
		}
		return out
	}
	bf := func(fs ...float32) []tensor.BFloat16 {
		out := make([]tensor.BFloat16, len(fs))
		for i, f := range fs {
			out[i] = tensor.BFloat16From(f)
		}
		return out
	}
	in := []*tensor.Tensor{
		{Name: "x_fp16", Datatype: tensor.FP16, Shape: []int64{2, 3}, Data: h(0, 0.5, -1, 2, 100, 1000)},
		{Name: "x_bf16", Datatype: tensor.BF16, Shape: []int64{2}, Data: bf(1.5, -3)},
		{Name: "x_fp64", Datatype: tensor.FP64, Shape: []int64{2}, Data: []float64{4, 2}},
		{Name: "x_int8", Datatype: tensor.INT8, Shape: []int64{2, 4}, Data: []int8{1, -2, 127, -127, 0, 5, -5, 9}},
		{Name: "x_int16", Datatype: tensor.INT16, Shape: []int64{3}, Data: []int16{-300, 300, -32767}},
		{Name: "x_uint8", Datatype: tensor.UINT8, Shape: []int64{2, 4}, Data: []uint8{0, 1, 128, 255, 2, 3, 4, 5}},
		{Name: "x_uint16", Datatype: tensor.UINT16, Shape: []int64{2}, Data: []uint16{65535, 7}},
		{Name: "x_uint32", Datatype: tensor.UINT32, Shape: []int64{2}, Data: []uint32{4294967295, 8}},
		{Name: "x_uint64", Datatype: tensor.UINT64, Shape: []int64{2}, Data: []uint64{18446744073709551615, 9}},
		{Name: "flags", Datatype: tensor.BOOL, Shape: []int64{2}, Data: []bool{true, false}},
		{Name: "words", Datatype: tensor.BYTES, Shape: []int64{2}, Data: []string{"héllo", ""}},
		{Name: "scale", Datatype: tensor.FP32, Shape: []int64{}, Data: []float32{2.5}},
		{Name: "count", Datatype: tensor.INT64, Shape: []int64{}, Data: []int64{5}},
	}
	out, err := s.Run(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []*tensor.Tensor{
		{Name: "fp16_plus_one", Datatype: tensor.FP16, Shape: []int64{2, 3}, Data: h(1, 1.5, 0, 3, 101, 1001)},
		{Name: "bf16_doubled", Datatype: tensor.BF16, Shape: []int64{2}, Data: bf(3, -6)},
		{Name: "fp64_sqrt", Datatype: tensor.FP64, Shape: []int64{2}, Data: []float64{2, 1.4142135623730951}},
		{Name: "int8_neg", Datatype: tensor.INT8, Shape: []int64{2, 4}, Data: []int8{-1, 2, -127, 127, 0, -5, 5, -9}},
		{Name: "int16_abs", Datatype: tensor.INT16, Shape: []int64{3}, Data: []int16{300, 300, 32767}},
		{Name: "uint8_as_int32", Datatype: tensor.INT32, Shape: []int64{2, 4}, Data: []int32{0, 1, 128, 255, 2, 3, 4, 5}},
		{Name: "uint16_same", Datatype: tensor.UINT16, Shape: []int64{2}, Data: []uint16{65535, 7}},
		{Name: "uint32_same", Datatype: tensor.UINT32, Shape: []int64{2}, Data: []uint32{4294967295, 8}},
		{Name: "uint64_same", Datatype: tensor.UINT64, Shape: []int64{2}, Data: []uint64{18446744073709551615, 9}},
		{Name: "flags_not", Datatype: tensor.BOOL, Shape: []int64{2}, Data: []bool{false, true}},
		{Name: "words_same", Datatype: tensor.BYTES, Shape: []int64{2}, Data: []string{"héllo", ""}},
		{Name: "total", Datatype: tensor.FP32, Shape: []int64{}, Data: []float32{12.5}},
		{Name: "total_is_big", Datatype: tensor.BOOL, Shape: []int64{}, Data: []bool{true}},
	} {
		got := out[want.Name]
		if got == nil {
			t.Errorf("output %s missing", want.Name)
			continue
		}
		if err := got.Validate(); err != nil {
			t.Errorf("output %s: %v", want.Name, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("output %s = %+v, want %+v", want.Name, got, want)
		}
	}
}

// TestSileroVAD runs a real third-party model with a rank-0 input (sr) and
// state batched on its second axis, feeding the first call's state back.
func TestSileroVAD(t *testing.T) {
	if _, err := ort.Init(); err != nil {
		t.Fatalf("ONNX Runtime must load here (make ort): %v", err)
	}
	s, err := ort.NewSession(corpus.Model(t, "silero_vad.onnx"), ort.Options{Provider: "cpu"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	audio := make([]float32, 512)
	for i := range audio {
		audio[i] = float32((i%32)-16) / 64
	}
	h, c := make([]float32, 128), make([]float32, 128)
	for call := range 2 {
		out, err := s.Run([]*tensor.Tensor{
			{Name: "input", Datatype: tensor.FP32, Shape: []int64{1, 512}, Data: audio},
			{Name: "sr", Datatype: tensor.INT64, Shape: []int64{}, Data: []int64{16000}},
			{Name: "h", Datatype: tensor.FP32, Shape: []int64{2, 1, 64}, Data: h},
			{Name: "c", Datatype: tensor.FP32, Shape: []int64{2, 1, 64}, Data: c},
		})
		if err != nil {
			t.Fatalf("call %d: %v", call, err)
		}
		p := out["output"].Data.([]float32)[0]
		if fmt.Sprint(out["output"].Shape, out["hn"].Shape, out["cn"].Shape) != "[1 1] [2 1 64] [2 1 64]" || p < 0 || p > 1 {
			t.Fatalf("call %d: shapes %v %v %v, probability %v", call, out["output"].Shape, out["hn"].Shape, out["cn"].Shape, p)
		}
		if reflect.DeepEqual(out["hn"].Data, h) {
			t.Fatalf("call %d: state did not change", call)
		}
		h, c = out["hn"].Data.([]float32), out["cn"].Data.([]float32)
	}
	// The model checks its sample rate: zeros (the synthetic warm-up) fail.
	_, err = s.Run([]*tensor.Tensor{
		{Name: "input", Datatype: tensor.FP32, Shape: []int64{1, 512}, Data: audio},
		{Name: "sr", Datatype: tensor.INT64, Shape: []int64{}, Data: []int64{0}},
		{Name: "h", Datatype: tensor.FP32, Shape: []int64{2, 1, 64}, Data: h},
		{Name: "c", Datatype: tensor.FP32, Shape: []int64{2, 1, 64}, Data: c},
	})
	if err != nil {
		t.Errorf("sr=0: %v", err)
	}
}

// TestUnservableTensorsRefusedAtLoad: what onnxruntime_go cannot build or
// read back is refused when the session is made, naming the tensor, not
// at the first request.
func TestUnservableTensorsRefusedAtLoad(t *testing.T) {
	if _, err := ort.Init(); err != nil {
		t.Fatalf("ONNX Runtime must load here (make ort): %v", err)
	}
	for name, want := range map[string]string{
		"fp16_dynamic.onnx":    `output "y" is FP16 with dynamic shape [-1]`,
		"sequence_output.onnx": `output "y" is not a tensor (ONNX_TYPE_SEQUENCE)`,
	} {
		_, err := ort.NewSession(corpus.Unservable(name), ort.Options{Provider: "cpu"})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want %q", name, err, want)
		}
	}
}
