package ort

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	onnx "github.com/yalue/onnxruntime_go"

	"github.com/pilotlight/pilotlight/functions/tensor"
)

// Execution providers a session can be asked for.
const (
	ProviderAuto = "auto"
	ProviderCPU  = "cpu"
	ProviderCUDA = "cuda"
)

// Options configure one session.
type Options struct {
	Provider       string // auto | cpu | cuda
	IntraOpThreads int
}

// IO describes one model input or output as the model itself declares it.
type IO struct {
	Name     string
	Datatype tensor.Datatype // "" when ONNX Runtime's type has no V2 equivalent we serve
	ONNXType string          // ONNX Runtime's element type name, for metadata
	Shape    []int64         // -1 for a dynamic dimension
}

// Session is one ONNX Runtime session. It is not safe for concurrent Run
// calls; the session pool hands each to one caller at a time.
type Session struct {
	s       *onnx.DynamicAdvancedSession
	inputs  []IO
	outputs []IO
	// Provider is the execution provider the session actually got: "cuda" or "cpu".
	Provider string
	// Fallback says why a requested CUDA provider was not used ("" when it was, or was not asked for).
	Fallback string
}

// Describe reads a model's inputs and outputs without creating a session for serving.
func Describe(path string) (inputs, outputs []IO, err error) {
	if _, err := Init(); err != nil {
		return nil, nil, err
	}
	in, out, err := onnx.GetInputOutputInfo(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read model %s: %w", path, err)
	}
	return convertInfo(in), convertInfo(out), nil
}

func convertInfo(infos []onnx.InputOutputInfo) []IO {
	out := make([]IO, len(infos))
	for i, info := range infos {
		out[i] = IO{Name: info.Name, Datatype: datatypeOf(info.DataType), ONNXType: info.DataType.String(), Shape: append([]int64(nil), info.Dimensions...)}
	}
	return out
}

func datatypeOf(t onnx.TensorElementDataType) tensor.Datatype {
	switch t {
	case onnx.TensorElementDataTypeFloat:
		return tensor.FP32
	case onnx.TensorElementDataTypeDouble:
		return tensor.FP64
	case onnx.TensorElementDataTypeInt64:
		return tensor.INT64
	case onnx.TensorElementDataTypeInt32:
		return tensor.INT32
	case onnx.TensorElementDataTypeBool:
		return tensor.BOOL
	case onnx.TensorElementDataTypeString:
		return tensor.BYTES
	}
	return ""
}

// NewSession creates a session for the model at path. With Provider "auto" it
// tries CUDA and falls back to CPU, recording why in Fallback; with "cuda" a
// library without CUDA is an error; with "cpu" CUDA is never tried.
func NewSession(path string, opts Options) (*Session, error) {
	if _, err := Init(); err != nil {
		return nil, err
	}
	inputs, outputs, err := Describe(path)
	if err != nil {
		return nil, err
	}
	for _, io := range append(append([]IO{}, inputs...), outputs...) {
		if io.Datatype == "" {
			return nil, fmt.Errorf("model %s: tensor %q has element type %s, which the runtime does not serve (FP32, FP64, INT64, INT32, BOOL, BYTES)", path, io.Name, io.ONNXType)
		}
	}
	so, err := onnx.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("session options: %w", err)
	}
	defer so.Destroy()
	threads := opts.IntraOpThreads
	if threads < 1 {
		threads = 1
	}
	if err := so.SetIntraOpNumThreads(threads); err != nil {
		return nil, fmt.Errorf("set intra-op threads: %w", err)
	}
	// One batch is one Run; parallelism across requests comes from the pool.
	if err := so.SetInterOpNumThreads(1); err != nil {
		return nil, fmt.Errorf("set inter-op threads: %w", err)
	}
	provider, fallback := ProviderCPU, ""
	switch opts.Provider {
	case ProviderCPU:
	case ProviderCUDA, ProviderAuto, "":
		cudaErr := cudaLibraryPresent()
		if cudaErr == nil || opts.Provider == ProviderCUDA {
			cudaErr = appendCUDA(so)
		}
		switch {
		case cudaErr == nil:
			provider = ProviderCUDA
		case opts.Provider == ProviderCUDA:
			return nil, fmt.Errorf("provider cuda requested for %s but unavailable: %w (use provider auto to fall back to CPU)", path, cudaErr)
		default:
			fallback = "cuda unavailable: " + firstLine(cudaErr.Error())
		}
	default:
		return nil, fmt.Errorf("unknown execution provider %q (auto, cpu, cuda)", opts.Provider)
	}
	names := func(ios []IO) []string {
		out := make([]string, len(ios))
		for i, io := range ios {
			out[i] = io.Name
		}
		return out
	}
	s, err := onnx.NewDynamicAdvancedSession(path, names(inputs), names(outputs), so)
	if err != nil {
		return nil, fmt.Errorf("create session for %s: %w", path, err)
	}
	return &Session{s: s, inputs: inputs, outputs: outputs, Provider: provider, Fallback: fallback}, nil
}

// cudaLibraryPresent checks for ONNX Runtime's CUDA provider next to the
// main library, where ONNX Runtime loads it from. Without it, asking for CUDA
// only makes ONNX Runtime print an error, so auto skips the attempt.
func cudaLibraryPresent() error {
	p := filepath.Join(filepath.Dir(initPath), "libonnxruntime_providers_cuda.so")
	if _, err := os.Stat(p); err != nil {
		return fmt.Errorf("%s not found: this ONNX Runtime build has no CUDA provider", p)
	}
	return nil
}

func appendCUDA(so *onnx.SessionOptions) error {
	cuda, err := onnx.NewCUDAProviderOptions()
	if err != nil {
		return err
	}
	defer cuda.Destroy()
	return so.AppendExecutionProviderCUDA(cuda)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// Inputs lists the model's inputs.
func (s *Session) Inputs() []IO { return s.inputs }

// Outputs lists the model's outputs.
func (s *Session) Outputs() []IO { return s.outputs }

// Close releases the session.
func (s *Session) Close() error { return s.s.Destroy() }

// Run feeds inputs (in any order, matched by name, every model input present)
// and returns every output by name. Output data is copied out of ONNX
// Runtime's memory before the call returns.
func (s *Session) Run(inputs []*tensor.Tensor) (map[string]*tensor.Tensor, error) {
	byName := make(map[string]*tensor.Tensor, len(inputs))
	for _, t := range inputs {
		byName[t.Name] = t
	}
	values := make([]onnx.Value, len(s.inputs))
	defer func() {
		for _, v := range values {
			if v != nil {
				v.Destroy()
			}
		}
	}()
	for i, io := range s.inputs {
		t, ok := byName[io.Name]
		if !ok {
			return nil, fmt.Errorf("missing input %q", io.Name)
		}
		v, err := toValue(t)
		if err != nil {
			return nil, err
		}
		values[i] = v
	}
	outs := make([]onnx.Value, len(s.outputs))
	if err := s.s.Run(values, outs); err != nil {
		return nil, err
	}
	result := make(map[string]*tensor.Tensor, len(outs))
	var firstErr error
	for i, v := range outs {
		if v == nil {
			continue
		}
		t, err := fromValue(s.outputs[i].Name, v)
		v.Destroy()
		if err != nil && firstErr == nil {
			firstErr = err
		}
		result[s.outputs[i].Name] = t
	}
	return result, firstErr
}

func toValue(t *tensor.Tensor) (onnx.Value, error) {
	shape := onnx.NewShape(t.Shape...)
	switch d := t.Data.(type) {
	case []float32:
		return onnx.NewTensor(shape, d)
	case []float64:
		return onnx.NewTensor(shape, d)
	case []int64:
		return onnx.NewTensor(shape, d)
	case []int32:
		return onnx.NewTensor(shape, d)
	case []bool:
		return onnx.NewTensor(shape, d)
	case []string:
		st, err := onnx.NewStringTensor(shape)
		if err != nil {
			return nil, err
		}
		if err := st.SetContents(d); err != nil {
			st.Destroy()
			return nil, err
		}
		return st, nil
	}
	return nil, fmt.Errorf("tensor %q: unsupported data %T", t.Name, t.Data)
}

func fromValue(name string, v onnx.Value) (*tensor.Tensor, error) {
	shape := []int64(v.GetShape().Clone())
	switch x := v.(type) {
	case *onnx.Tensor[float32]:
		return &tensor.Tensor{Name: name, Datatype: tensor.FP32, Shape: shape, Data: append([]float32(nil), x.GetData()...)}, nil
	case *onnx.Tensor[float64]:
		return &tensor.Tensor{Name: name, Datatype: tensor.FP64, Shape: shape, Data: append([]float64(nil), x.GetData()...)}, nil
	case *onnx.Tensor[int64]:
		return &tensor.Tensor{Name: name, Datatype: tensor.INT64, Shape: shape, Data: append([]int64(nil), x.GetData()...)}, nil
	case *onnx.Tensor[int32]:
		return &tensor.Tensor{Name: name, Datatype: tensor.INT32, Shape: shape, Data: append([]int32(nil), x.GetData()...)}, nil
	case *onnx.Tensor[bool]:
		return &tensor.Tensor{Name: name, Datatype: tensor.BOOL, Shape: shape, Data: append([]bool(nil), x.GetData()...)}, nil
	case *onnx.StringTensor:
		s, err := x.GetContents()
		if err != nil {
			return nil, fmt.Errorf("output %q: %w", name, err)
		}
		return &tensor.Tensor{Name: name, Datatype: tensor.BYTES, Shape: shape, Data: s}, nil
	}
	return nil, fmt.Errorf("output %q: unsupported ONNX Runtime value %T", name, v)
}

// Prewarm creates, runs once and destroys a session on model (ONNX bytes),
// paying ONNX Runtime's one-time costs (thread pools, kernel registries,
// allocators) ahead of demand: a warm-pool process calls it while idle so
// specialising it later only loads the revision's own model.
func Prewarm(model []byte, inputs []*tensor.Tensor) error {
	if _, err := Init(); err != nil {
		return err
	}
	so, err := onnx.NewSessionOptions()
	if err != nil {
		return err
	}
	defer so.Destroy()
	if err := so.SetIntraOpNumThreads(1); err != nil {
		return err
	}
	names := make([]string, len(inputs))
	for i, t := range inputs {
		names[i] = t.Name
	}
	_, outs, err := onnx.GetInputOutputInfoWithONNXData(model)
	if err != nil {
		return fmt.Errorf("prewarm model: %w", err)
	}
	outNames := make([]string, len(outs))
	for i, o := range outs {
		outNames[i] = o.Name
	}
	s, err := onnx.NewDynamicAdvancedSessionWithONNXData(model, names, outNames, so)
	if err != nil {
		return fmt.Errorf("prewarm session: %w", err)
	}
	sess := &Session{s: s, inputs: make([]IO, len(inputs)), outputs: convertInfo(outs)}
	for i, t := range inputs {
		sess.inputs[i] = IO{Name: t.Name}
	}
	defer sess.Close()
	_, err = sess.Run(inputs)
	return err
}
