package ort

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

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
	// DeviceMemoryLimit bounds what a session on the CUDA provider may
	// hold on the device (its arena's gpu_mem_limit); 0: ONNX Runtime's
	// default, no bound (functions.DeviceArenaBytes is the rule).
	DeviceMemoryLimit int64
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
	// DeviceBytes is the device memory the session may hold: its arena's
	// limit on CUDA (Options.DeviceMemoryLimit), 0 on the CPU.
	DeviceBytes int64
}

// Describe reads a model's inputs and outputs without creating a session
// for serving. ONNX Runtime reads them from a temporary session; it is
// made with one thread and no graph optimisation (neither changes what a
// model declares), which cost 1.0 ms against 2.2 for fraud's with the
// defaults, and its answer is kept per file (path, inode, size and
// modification time), so the sessions of one pool, and a revision loaded
// again into the same process, describe the model once.
func Describe(path string) (inputs, outputs []IO, err error) {
	if _, err := Init(); err != nil {
		return nil, nil, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read model %s: %w", path, err)
	}
	key := describeKey{path: path, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		key.dev, key.ino = uint64(st.Dev), st.Ino
	}
	v, _ := described.LoadOrStore(key, &description{})
	d := v.(*description)
	d.once.Do(func() { d.inputs, d.outputs, d.err = describe(path) })
	if d.err != nil {
		described.Delete(key) // a failure is not kept: the next load tries again
		return nil, nil, d.err
	}
	// Callers own what they get: copies, so no caller changes another's.
	return cloneIO(d.inputs), cloneIO(d.outputs), nil
}

// described holds Describe's answers by file.
var described sync.Map // describeKey → *description

type describeKey struct {
	path        string
	dev, ino    uint64
	size, mtime int64
}

type description struct {
	once            sync.Once
	inputs, outputs []IO
	err             error
}

func describe(path string) (inputs, outputs []IO, err error) {
	so, err := onnx.NewSessionOptions()
	if err != nil {
		return nil, nil, fmt.Errorf("session options: %w", err)
	}
	defer so.Destroy()
	if err := so.SetIntraOpNumThreads(1); err != nil {
		return nil, nil, fmt.Errorf("set intra-op threads: %w", err)
	}
	if err := so.SetInterOpNumThreads(1); err != nil {
		return nil, nil, fmt.Errorf("set inter-op threads: %w", err)
	}
	if err := so.SetGraphOptimizationLevel(onnx.GraphOptimizationLevelDisableAll); err != nil {
		return nil, nil, fmt.Errorf("set graph optimisation level: %w", err)
	}
	in, out, err := onnx.GetInputOutputInfoWithOptions(path, so)
	if err != nil {
		return nil, nil, fmt.Errorf("read model %s: %w", path, err)
	}
	return convertInfo(in), convertInfo(out), nil
}

func cloneIO(ios []IO) []IO {
	out := slices.Clone(ios)
	for i := range out {
		out[i].Shape = slices.Clone(out[i].Shape)
	}
	return out
}

func convertInfo(infos []onnx.InputOutputInfo) []IO {
	out := make([]IO, len(infos))
	for i, info := range infos {
		out[i] = IO{Name: info.Name, Datatype: datatypeOf(info.DataType), ONNXType: info.DataType.String(), Shape: append([]int64(nil), info.Dimensions...)}
		if info.OrtValueType != onnx.ONNXTypeTensor {
			// A sequence or map (scikit-learn's ZipMap, say) has no tensor datatype.
			out[i].Datatype, out[i].ONNXType, out[i].Shape = "", info.OrtValueType.String(), nil
		}
	}
	return out
}

// elementTypes maps ONNX element types to the V2 datatypes the runtime serves.
var elementTypes = map[onnx.TensorElementDataType]tensor.Datatype{
	onnx.TensorElementDataTypeFloat16: tensor.FP16, onnx.TensorElementDataTypeBFloat16: tensor.BF16,
	onnx.TensorElementDataTypeFloat: tensor.FP32, onnx.TensorElementDataTypeDouble: tensor.FP64,
	onnx.TensorElementDataTypeInt8: tensor.INT8, onnx.TensorElementDataTypeInt16: tensor.INT16,
	onnx.TensorElementDataTypeInt32: tensor.INT32, onnx.TensorElementDataTypeInt64: tensor.INT64,
	onnx.TensorElementDataTypeUint8: tensor.UINT8, onnx.TensorElementDataTypeUint16: tensor.UINT16,
	onnx.TensorElementDataTypeUint32: tensor.UINT32, onnx.TensorElementDataTypeUint64: tensor.UINT64,
	onnx.TensorElementDataTypeBool: tensor.BOOL, onnx.TensorElementDataTypeString: tensor.BYTES,
}

func datatypeOf(t onnx.TensorElementDataType) tensor.Datatype { return elementTypes[t] }

// checkServable says why the runtime cannot serve io ("" when it can):
// its element type has no V2 name, or onnxruntime_go (v1.27) cannot build
// or read back a value of that type and shape. Refusing at load names the
// tensor; the same limit met at the first request would only be a 500.
func checkServable(io IO, output bool) string {
	switch {
	case io.Datatype == "" && !strings.HasPrefix(io.ONNXType, "ONNX_TENSOR_ELEMENT_DATA_TYPE_"):
		return fmt.Sprintf("is not a tensor (%s): the Open Inference Protocol carries tensors only", io.ONNXType)
	case io.Datatype == "":
		return fmt.Sprintf("has element type %s, which has no Open Inference Protocol datatype the runtime serves (%s)", io.ONNXType, datatypeList())
	case len(io.Shape) == 0 && (io.Datatype == tensor.BYTES || io.Datatype == tensor.FP16 || io.Datatype == tensor.BF16):
		return fmt.Sprintf("is a rank-0 %s scalar, which onnxruntime_go cannot build", io.Datatype)
	case output && (io.Datatype == tensor.FP16 || io.Datatype == tensor.BF16) && !static(io.Shape):
		return fmt.Sprintf("is %s with dynamic shape %v: onnxruntime_go reads back only 16-bit float outputs whose shape the model fixes", io.Datatype, io.Shape)
	}
	return ""
}

func datatypeList() string {
	names := make([]string, len(tensor.Datatypes))
	for i, dt := range tensor.Datatypes {
		names[i] = string(dt)
	}
	return strings.Join(names, ", ")
}

// static reports whether every dimension of shape is fixed.
func static(shape []int64) bool {
	for _, d := range shape {
		if d < 0 {
			return false
		}
	}
	return true
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
	for i, io := range append(append([]IO{}, inputs...), outputs...) {
		kind := "input"
		if i >= len(inputs) {
			kind = "output"
		}
		if why := checkServable(io, kind == "output"); why != "" {
			return nil, fmt.Errorf("model %s: %s %q %s", path, kind, io.Name, why)
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
			cudaErr = appendCUDA(so, opts.DeviceMemoryLimit)
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
	sess := &Session{s: s, inputs: inputs, outputs: outputs, Provider: provider, Fallback: fallback}
	if provider == ProviderCUDA {
		sess.DeviceBytes = opts.DeviceMemoryLimit
	}
	return sess, nil
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

// appendCUDA asks for the CUDA provider, its arena bounded by limit
// bytes when limit > 0 (gpu_mem_limit, an option of ONNX Runtime's CUDA
// provider), so the session holds no more of the device than it is charged.
func appendCUDA(so *onnx.SessionOptions, limit int64) error {
	cuda, err := onnx.NewCUDAProviderOptions()
	if err != nil {
		return err
	}
	defer cuda.Destroy()
	if limit > 0 {
		if err := cuda.Update(map[string]string{"gpu_mem_limit": strconv.FormatInt(limit, 10)}); err != nil {
			return fmt.Errorf("set the CUDA arena's limit: %w", err)
		}
	}
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
	defer func() {
		for _, v := range outs {
			if v != nil {
				v.Destroy()
			}
		}
	}()
	for i, io := range s.outputs {
		v, err := preallocate(io)
		if err != nil {
			return nil, fmt.Errorf("output %q: %w", io.Name, err)
		}
		outs[i] = v
	}
	if err := s.s.Run(values, outs); err != nil {
		return nil, err
	}
	result := make(map[string]*tensor.Tensor, len(outs))
	var firstErr error
	for i, v := range outs {
		if v == nil {
			continue
		}
		t, err := fromValue(s.outputs[i], v)
		if err != nil && firstErr == nil {
			firstErr = err
		}
		result[s.outputs[i].Name] = t
	}
	return result, firstErr
}

// toValue builds ONNX Runtime's value for t: a scalar for rank 0 (ONNX
// Runtime refuses a tensor with no dimensions), raw little-endian bytes for
// the 16-bit floats, which onnxruntime_go has no Go type for.
func toValue(t *tensor.Tensor) (onnx.Value, error) {
	if len(t.Shape) == 0 {
		return scalarValue(t)
	}
	shape := onnx.NewShape(t.Shape...)
	switch d := t.Data.(type) {
	case []tensor.Float16:
		return onnx.NewCustomDataTensor(shape, halfBytes(d), onnx.TensorElementDataTypeFloat16)
	case []tensor.BFloat16:
		return onnx.NewCustomDataTensor(shape, halfBytes(d), onnx.TensorElementDataTypeBFloat16)
	case []float32:
		return newTensor(shape, d)
	case []float64:
		return newTensor(shape, d)
	case []int8:
		return newTensor(shape, d)
	case []int16:
		return newTensor(shape, d)
	case []int32:
		return newTensor(shape, d)
	case []int64:
		return newTensor(shape, d)
	case []uint8:
		return newTensor(shape, d)
	case []uint16:
		return newTensor(shape, d)
	case []uint32:
		return newTensor(shape, d)
	case []uint64:
		return newTensor(shape, d)
	case []bool:
		return newTensor(shape, d)
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

// newTensor wraps onnx.NewTensor so a zero-element tensor (a dimension of
// 0) gets a backing array: onnxruntime_go takes the address of data[0].
func newTensor[T onnx.TensorData](shape onnx.Shape, d []T) (onnx.Value, error) {
	if len(d) == 0 {
		return onnx.NewTensor(shape, make([]T, 1))
	}
	return onnx.NewTensor(shape, d)
}

func scalarValue(t *tensor.Tensor) (onnx.Value, error) {
	if t.Len() != 1 {
		return nil, fmt.Errorf("tensor %q: a scalar holds one value, got %d", t.Name, t.Len())
	}
	switch d := t.Data.(type) {
	case []float32:
		return onnx.NewScalar(d[0])
	case []float64:
		return onnx.NewScalar(d[0])
	case []int8:
		return onnx.NewScalar(d[0])
	case []int16:
		return onnx.NewScalar(d[0])
	case []int32:
		return onnx.NewScalar(d[0])
	case []int64:
		return onnx.NewScalar(d[0])
	case []uint8:
		return onnx.NewScalar(d[0])
	case []uint16:
		return onnx.NewScalar(d[0])
	case []uint32:
		return onnx.NewScalar(d[0])
	case []uint64:
		return onnx.NewScalar(d[0])
	case []bool:
		return onnx.NewScalar(d[0])
	}
	return nil, fmt.Errorf("tensor %q: a rank-0 %s cannot be built by onnxruntime_go", t.Name, t.Datatype)
}

// preallocate makes the value ONNX Runtime writes output io into when
// onnxruntime_go could not wrap the one ONNX Runtime would allocate: a
// rank-0 output (it refuses a shape with no dimensions) and a 16-bit float
// (it copies half of the bytes). Both have shapes the model fixes
// (checkServable refused the others at load). nil: let ONNX Runtime allocate.
func preallocate(io IO) (onnx.Value, error) {
	if len(io.Shape) == 0 {
		switch io.Datatype {
		case tensor.FP32:
			return onnx.NewEmptyScalar[float32]()
		case tensor.FP64:
			return onnx.NewEmptyScalar[float64]()
		case tensor.INT8:
			return onnx.NewEmptyScalar[int8]()
		case tensor.INT16:
			return onnx.NewEmptyScalar[int16]()
		case tensor.INT32:
			return onnx.NewEmptyScalar[int32]()
		case tensor.INT64:
			return onnx.NewEmptyScalar[int64]()
		case tensor.UINT8:
			return onnx.NewEmptyScalar[uint8]()
		case tensor.UINT16:
			return onnx.NewEmptyScalar[uint16]()
		case tensor.UINT32:
			return onnx.NewEmptyScalar[uint32]()
		case tensor.UINT64:
			return onnx.NewEmptyScalar[uint64]()
		case tensor.BOOL:
			return onnx.NewEmptyScalar[bool]()
		}
		return nil, fmt.Errorf("a rank-0 %s cannot be built by onnxruntime_go", io.Datatype)
	}
	if (io.Datatype == tensor.FP16 || io.Datatype == tensor.BF16) && static(io.Shape) {
		n, err := tensor.Elements(io.Shape)
		if err != nil {
			return nil, err
		}
		var kind onnx.TensorElementDataType = onnx.TensorElementDataTypeFloat16
		if io.Datatype == tensor.BF16 {
			kind = onnx.TensorElementDataTypeBFloat16
		}
		return onnx.NewCustomDataTensor(onnx.NewShape(io.Shape...), make([]byte, 2*max(n, 1)), kind)
	}
	return nil, nil
}

func halfBytes[T ~uint16](d []T) []byte {
	b := make([]byte, 0, 2*max(len(d), 1))
	for _, v := range d {
		b = binary.LittleEndian.AppendUint16(b, uint16(v))
	}
	if len(b) == 0 {
		b = append(b, 0, 0) // onnxruntime_go refuses an empty buffer, even for zero elements
	}
	return b
}

func fromHalfBytes[T ~uint16](b []byte, n int) []T {
	out := make([]T, n)
	for i := range out {
		out[i] = T(binary.LittleEndian.Uint16(b[2*i:]))
	}
	return out
}

// copyOut copies a value's data out of ONNX Runtime's (or onnxruntime_go's) memory.
func copyOut[T any](d []T) []T { return append([]T(nil), d...) }

func fromValue(io IO, v onnx.Value) (*tensor.Tensor, error) {
	name := io.Name
	shape := []int64(v.GetShape().Clone())
	if shape == nil {
		shape = []int64{}
	}
	out := &tensor.Tensor{Name: name, Shape: shape}
	switch x := v.(type) {
	case *onnx.Tensor[float32]:
		out.Data = copyOut(x.GetData())
	case *onnx.Tensor[float64]:
		out.Data = copyOut(x.GetData())
	case *onnx.Tensor[int8]:
		out.Data = copyOut(x.GetData())
	case *onnx.Tensor[int16]:
		out.Data = copyOut(x.GetData())
	case *onnx.Tensor[int32]:
		out.Data = copyOut(x.GetData())
	case *onnx.Tensor[int64]:
		out.Data = copyOut(x.GetData())
	case *onnx.Tensor[uint8]:
		out.Data = copyOut(x.GetData())
	case *onnx.Tensor[uint16]:
		out.Data = copyOut(x.GetData())
	case *onnx.Tensor[uint32]:
		out.Data = copyOut(x.GetData())
	case *onnx.Tensor[uint64]:
		out.Data = copyOut(x.GetData())
	case *onnx.Tensor[bool]:
		out.Data = copyOut(x.GetData())
	case *onnx.Scalar[float32]:
		out.Data = []float32{x.GetData()}
	case *onnx.Scalar[float64]:
		out.Data = []float64{x.GetData()}
	case *onnx.Scalar[int8]:
		out.Data = []int8{x.GetData()}
	case *onnx.Scalar[int16]:
		out.Data = []int16{x.GetData()}
	case *onnx.Scalar[int32]:
		out.Data = []int32{x.GetData()}
	case *onnx.Scalar[int64]:
		out.Data = []int64{x.GetData()}
	case *onnx.Scalar[uint8]:
		out.Data = []uint8{x.GetData()}
	case *onnx.Scalar[uint16]:
		out.Data = []uint16{x.GetData()}
	case *onnx.Scalar[uint32]:
		out.Data = []uint32{x.GetData()}
	case *onnx.Scalar[uint64]:
		out.Data = []uint64{x.GetData()}
	case *onnx.Scalar[bool]:
		out.Data = []bool{x.GetData()}
	case *onnx.CustomDataTensor:
		n, err := tensor.Elements(shape)
		if err != nil {
			return nil, fmt.Errorf("output %q: %w", name, err)
		}
		switch io.Datatype {
		case tensor.FP16:
			out.Data = fromHalfBytes[tensor.Float16](x.GetData(), int(n))
		case tensor.BF16:
			out.Data = fromHalfBytes[tensor.BFloat16](x.GetData(), int(n))
		default:
			return nil, fmt.Errorf("output %q: raw ONNX Runtime value for %s", name, io.Datatype)
		}
	case *onnx.StringTensor:
		s, err := x.GetContents()
		if err != nil {
			return nil, fmt.Errorf("output %q: %w", name, err)
		}
		out.Data = s
	default:
		return nil, fmt.Errorf("output %q: unsupported ONNX Runtime value %T", name, v)
	}
	out.Datatype = tensor.DatatypeOf(out.Data)
	return out, nil
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
