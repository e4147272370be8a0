package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/functions/tensor"
	"github.com/pilotlight/pilotlight/runtime/ort"
)

// inferRequest is the Open Inference Protocol (KServe V2) REST infer request.
type inferRequest struct {
	ID         string          `json:"id,omitempty"`
	Parameters map[string]any  `json:"parameters,omitempty"`
	Inputs     []requestInput  `json:"inputs"`
	Outputs    []requestOutput `json:"outputs,omitempty"`
}

type requestInput struct {
	Name       string          `json:"name"`
	Shape      []int64         `json:"shape"`
	Datatype   string          `json:"datatype"`
	Parameters map[string]any  `json:"parameters,omitempty"`
	Data       json.RawMessage `json:"data"`
}

type requestOutput struct {
	Name       string         `json:"name"`
	Parameters map[string]any `json:"parameters,omitempty"`
}

// maxTensorElements bounds one input so a hostile shape cannot make the
// server allocate more than the body could ever carry.
const maxTensorElements = 1 << 24

// decodeInfer parses and validates a V2 infer request against the model's
// declared inputs and outputs. Every problem is a *functions.BadRequest.
func decodeInfer(body []byte, inputs, outputs []ort.IO) (req *inferRequest, ts []*tensor.Tensor, rows int, err error) {
	req, err = parseInferRequest(body)
	if err != nil {
		return nil, nil, 0, functions.Badf("malformed infer request: %v", err)
	}
	chk, err := newInputChecker(inputs, len(req.Inputs))
	if err != nil {
		return nil, nil, 0, err
	}
	for i, in := range req.Inputs {
		io, n, err := chk.check(i, in.Name, in.Datatype, in.Shape)
		if err != nil {
			return nil, nil, 0, err
		}
		if len(in.Data) == 0 {
			return nil, nil, 0, functions.Badf("input %q: data is required", in.Name)
		}
		t := &tensor.Tensor{Name: in.Name, Datatype: io.Datatype, Shape: in.Shape}
		if t.Data, err = decodeData(in.Data, io.Datatype, n); err != nil {
			return nil, nil, 0, functions.Badf("input %q: %v", in.Name, err)
		}
		if err := t.Validate(); err != nil {
			return nil, nil, 0, functions.Badf("%v", err)
		}
		ts = append(ts, t)
	}
	wanted := make([]string, len(req.Outputs))
	for i, o := range req.Outputs {
		wanted[i] = o.Name
	}
	if rows, err = chk.done(outputs, wanted); err != nil {
		return nil, nil, 0, err
	}
	return req, ts, rows, nil
}

// inputChecker holds the rules every V2 infer request obeys, whichever
// transport carried it (REST JSON or gRPC protobuf): inputs are the
// model's, each once, with its datatype and a shape that fits, no larger
// than maxTensorElements, with one row count; every input is given and
// every requested output exists. Only decoding the data differs per transport.
type inputChecker struct {
	inputs   []ort.IO
	declared map[string]ort.IO
	seen     map[string]bool
	rows     int
}

// newInputChecker starts checking a request that carries count inputs.
func newInputChecker(inputs []ort.IO, count int) (*inputChecker, error) {
	if count == 0 {
		return nil, functions.Badf("infer request has no inputs; the model needs %s", ioNames(inputs))
	}
	c := &inputChecker{inputs: inputs, declared: make(map[string]ort.IO, len(inputs)), seen: make(map[string]bool, len(inputs)), rows: -1}
	for _, io := range inputs {
		c.declared[io.Name] = io
	}
	return c, nil
}

// check validates the request's input i (its name, datatype and shape) and
// returns the model's declaration of it and the number of values its data must hold.
func (c *inputChecker) check(i int, name, datatype string, shape []int64) (ort.IO, int, error) {
	io, ok := c.declared[name]
	if !ok {
		return io, 0, functions.Badf("inputs[%d]: unknown input %q; the model's inputs are %s", i, name, ioNames(c.inputs))
	}
	if c.seen[name] {
		return io, 0, functions.Badf("inputs[%d]: input %q given twice", i, name)
	}
	c.seen[name] = true
	if tensor.Datatype(datatype) != io.Datatype {
		return io, 0, functions.Badf("input %q: datatype %q, the model expects %s", name, datatype, io.Datatype)
	}
	if len(shape) != len(io.Shape) {
		return io, 0, functions.Badf("input %q: shape %v has %d dimensions, the model expects %d (%v, -1 = any)", name, shape, len(shape), len(io.Shape), io.Shape)
	}
	for d := range shape {
		if shape[d] < 0 {
			return io, 0, functions.Badf("input %q: shape[%d] is %d; dimensions must be >= 0", name, d, shape[d])
		}
		if io.Shape[d] >= 0 && shape[d] != io.Shape[d] {
			return io, 0, functions.Badf("input %q: shape %v does not match the model's %v at dimension %d", name, shape, io.Shape, d)
		}
	}
	n, err := tensor.Elements(shape)
	if err != nil || n > maxTensorElements {
		return io, 0, functions.Badf("input %q: shape %v is too large (at most %d elements)", name, shape, maxTensorElements)
	}
	if len(shape) > 0 && io.Shape[0] < 0 {
		if c.rows >= 0 && int(shape[0]) != c.rows {
			return io, 0, functions.Badf("input %q: %d rows, but other inputs have %d", name, shape[0], c.rows)
		}
		c.rows = int(shape[0])
	}
	return io, int(n), nil
}

// done checks that every declared input was given and every wanted output
// exists, and returns the request's rows.
func (c *inputChecker) done(outputs []ort.IO, wanted []string) (rows int, err error) {
	for _, io := range c.inputs {
		if !c.seen[io.Name] {
			return 0, functions.Badf("missing input %q (%s %v)", io.Name, io.Datatype, io.Shape)
		}
	}
	for i, name := range wanted {
		known := false
		for _, o := range outputs {
			known = known || o.Name == name
		}
		if !known {
			return 0, functions.Badf("outputs[%d]: unknown output %q; the model's outputs are %s", i, name, ioNames(outputs))
		}
	}
	switch {
	case c.rows < 0:
		return 1, nil
	case c.rows == 0:
		return 0, functions.Badf("inputs have 0 rows; send at least one")
	}
	return c.rows, nil
}

func ioNames(ios []ort.IO) string {
	var b bytes.Buffer
	for i, io := range ios {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s (%s %v)", io.Name, io.Datatype, io.Shape)
	}
	return b.String()
}

// decodeData flattens V2 "data" (flat or nested row-major arrays) into a
// typed slice, refusing more than want values, non-finite numbers, and
// numbers that do not fit the datatype.
func decodeData(raw json.RawMessage, dt tensor.Datatype, want int) (any, error) {
	switch dt {
	case tensor.FP32:
		out := make([]float32, 0, want)
		err := scanTokens(raw, want, func(tok []byte) error {
			f, err := parseFloat(tok, 32)
			out = append(out, float32(f))
			return err
		})
		return out, err
	case tensor.FP64:
		out := make([]float64, 0, want)
		err := scanTokens(raw, want, func(tok []byte) error {
			f, err := parseFloat(tok, 64)
			out = append(out, f)
			return err
		})
		return out, err
	case tensor.FP16:
		out := make([]tensor.Float16, 0, want)
		err := scanTokens(raw, want, func(tok []byte) error {
			f, err := parseHalf(tok, dt)
			out = append(out, tensor.Float16From(f))
			return err
		})
		return out, err
	case tensor.BF16:
		out := make([]tensor.BFloat16, 0, want)
		err := scanTokens(raw, want, func(tok []byte) error {
			f, err := parseHalf(tok, dt)
			out = append(out, tensor.BFloat16From(f))
			return err
		})
		return out, err
	case tensor.INT8:
		return decodeInts[int8](raw, dt, want, 8)
	case tensor.INT16:
		return decodeInts[int16](raw, dt, want, 16)
	case tensor.INT32:
		return decodeInts[int32](raw, dt, want, 32)
	case tensor.INT64:
		return decodeInts[int64](raw, dt, want, 64)
	case tensor.UINT8:
		return decodeUints[uint8](raw, dt, want, 8)
	case tensor.UINT16:
		return decodeUints[uint16](raw, dt, want, 16)
	case tensor.UINT32:
		return decodeUints[uint32](raw, dt, want, 32)
	case tensor.UINT64:
		return decodeUints[uint64](raw, dt, want, 64)
	case tensor.BOOL:
		out := make([]bool, 0, want)
		err := scanTokens(raw, want, func(tok []byte) error {
			switch string(tok) {
			case "true":
				out = append(out, true)
			case "false":
				out = append(out, false)
			default:
				return fmt.Errorf("%s is not a BOOL (true or false)", tok)
			}
			return nil
		})
		return out, err
	case tensor.BYTES:
		var nested any
		if err := json.Unmarshal(raw, &nested); err != nil {
			return nil, fmt.Errorf("data: %v", err)
		}
		out := make([]string, 0, want)
		var walk func(v any, depth int) error
		walk = func(v any, depth int) error {
			if depth > 32 {
				return fmt.Errorf("data nested deeper than 32 levels")
			}
			switch x := v.(type) {
			case string:
				if len(out) >= want {
					return fmt.Errorf("more values than the shape holds (%d)", want)
				}
				out = append(out, x)
			case []any:
				for _, e := range x {
					if err := walk(e, depth+1); err != nil {
						return err
					}
				}
			default:
				return fmt.Errorf("BYTES data must be strings, got %T", v)
			}
			return nil
		}
		if err := walk(nested, 0); err != nil {
			return nil, err
		}
		if len(out) != want {
			return nil, fmt.Errorf("data has %d values, shape needs %d", len(out), want)
		}
		return out, nil
	}
	return nil, fmt.Errorf("datatype %s is not served", dt)
}

// decodeInts reads want integers that fit bits (a JSON number such as 3.0
// or 1e2 is refused: an integer tensor takes integers).
func decodeInts[T int8 | int16 | int32 | int64](raw []byte, dt tensor.Datatype, want, bits int) ([]T, error) {
	out := make([]T, 0, want)
	err := scanTokens(raw, want, func(tok []byte) error {
		v, err := strconv.ParseInt(string(tok), 10, bits)
		if err != nil {
			return fmt.Errorf("%s is not an %s (an integer in [%d, %d])", tok, dt, int64(-1)<<(bits-1), uint64(1)<<(bits-1)-1)
		}
		out = append(out, T(v))
		return nil
	})
	return out, err
}

func decodeUints[T uint8 | uint16 | uint32 | uint64](raw []byte, dt tensor.Datatype, want, bits int) ([]T, error) {
	out := make([]T, 0, want)
	err := scanTokens(raw, want, func(tok []byte) error {
		v, err := strconv.ParseUint(string(tok), 10, bits)
		if err != nil {
			return fmt.Errorf("%s is not a %s (an integer in [0, %d])", tok, dt, uint64(1)<<(bits-1)-1+uint64(1)<<(bits-1))
		}
		out = append(out, T(v))
		return nil
	})
	return out, err
}

// parseHalf reads a number for FP16 or BF16 and refuses one the type
// cannot hold: rounding 1e6 to FP16 would give Inf, not the caller's number.
func parseHalf(tok []byte, dt tensor.Datatype) (float32, error) {
	f, err := strconv.ParseFloat(string(tok), 32)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, fmt.Errorf("%s is not a finite %s number", tok, dt)
	}
	var back float32
	if dt == tensor.FP16 {
		back = tensor.Float16From(float32(f)).Float32()
	} else {
		back = tensor.BFloat16From(float32(f)).Float32()
	}
	if math.IsInf(float64(back), 0) {
		return 0, fmt.Errorf("%s is out of %s's range", tok, dt)
	}
	return float32(f), nil
}

func parseFloat(tok []byte, bits int) (float64, error) {
	f, err := strconv.ParseFloat(string(tok), bits)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, fmt.Errorf("%s is not a finite FP%d number", tok, bits)
	}
	return f, nil
}

// maxNesting bounds how deep "data" arrays may nest.
const maxNesting = 32

// scanTokens walks a JSON array (nested arrays allowed) of scalar tokens,
// calling emit with each scalar, without building an intermediate tree.
func scanTokens(raw []byte, limit int, emit func(tok []byte) error) error {
	depth, count := 0, 0
	expectValue := true
	afterComma := false
	i := 0
	skip := func() {
		for i < len(raw) && (raw[i] == ' ' || raw[i] == '\n' || raw[i] == '\t' || raw[i] == '\r') {
			i++
		}
	}
	skip()
	if i >= len(raw) || raw[i] != '[' {
		// A single scalar is allowed for a one-element tensor.
		if limit != 1 {
			return fmt.Errorf("data must be an array")
		}
	}
	for skip(); i < len(raw); skip() {
		c := raw[i]
		switch {
		case c == '[':
			if !expectValue {
				return fmt.Errorf("data: unexpected '[' at byte %d", i)
			}
			afterComma = false
			depth++
			if depth > maxNesting {
				return fmt.Errorf("data nested deeper than %d levels", maxNesting)
			}
			i++
		case c == ']':
			if depth == 0 {
				return fmt.Errorf("data: unbalanced ']' at byte %d", i)
			}
			if afterComma {
				return fmt.Errorf("data: ',' before ']' at byte %d", i)
			}
			depth--
			expectValue = false
			i++
		case c == ',':
			if expectValue || depth == 0 {
				return fmt.Errorf("data: unexpected ',' at byte %d", i)
			}
			expectValue = true
			afterComma = true
			i++
		default:
			if !expectValue {
				return fmt.Errorf("data: missing ',' at byte %d", i)
			}
			afterComma = false
			start := i
			for i < len(raw) && raw[i] != ',' && raw[i] != ']' && raw[i] != '[' && raw[i] != ' ' && raw[i] != '\n' && raw[i] != '\t' && raw[i] != '\r' {
				i++
			}
			count++
			if count > limit {
				return fmt.Errorf("data has more values than shape holds (%d)", limit)
			}
			if err := emit(raw[start:i]); err != nil {
				return err
			}
			expectValue = false
		}
	}
	if depth != 0 {
		return fmt.Errorf("data: unbalanced '['")
	}
	if count != limit {
		return fmt.Errorf("data has %d values, shape needs %d", count, limit)
	}
	return nil
}

// appendTensorJSON writes one V2 output tensor as JSON, fast for the numeric types.
func appendTensorJSON(b []byte, t *tensor.Tensor) []byte {
	b = append(b, `{"name":`...)
	b = strconv.AppendQuote(b, t.Name)
	b = append(b, `,"datatype":"`...)
	b = append(b, t.Datatype...)
	b = append(b, `","shape":[`...)
	for i, d := range t.Shape {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, d, 10)
	}
	b = append(b, `],"data":[`...)
	switch d := t.Data.(type) {
	case []float32:
		for i, v := range d {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendFloat(b, float64(v), 32)
		}
	case []float64:
		for i, v := range d {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendFloat(b, v, 64)
		}
	case []tensor.Float16:
		for i, v := range d {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendFloat(b, float64(v.Float32()), 32)
		}
	case []tensor.BFloat16:
		for i, v := range d {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendFloat(b, float64(v.Float32()), 32)
		}
	case []int8:
		b = appendInts(b, d)
	case []int16:
		b = appendInts(b, d)
	case []int32:
		b = appendInts(b, d)
	case []int64:
		b = appendInts(b, d)
	case []uint8:
		b = appendUints(b, d)
	case []uint16:
		b = appendUints(b, d)
	case []uint32:
		b = appendUints(b, d)
	case []uint64:
		b = appendUints(b, d)
	case []bool:
		for i, v := range d {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendBool(b, v)
		}
	case []string:
		for i, v := range d {
			if i > 0 {
				b = append(b, ',')
			}
			enc, _ := json.Marshal(v)
			b = append(b, enc...)
		}
	}
	return append(b, "]}"...)
}

func appendInts[T int8 | int16 | int32 | int64](b []byte, d []T) []byte {
	for i, v := range d {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(v), 10)
	}
	return b
}

func appendUints[T uint8 | uint16 | uint32 | uint64](b []byte, d []T) []byte {
	for i, v := range d {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, uint64(v), 10)
	}
	return b
}

// appendFloat writes a finite float; a model that produced NaN or Inf gets
// null, since JSON has no such numbers.
func appendFloat(b []byte, f float64, bits int) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(b, "null"...)
	}
	return strconv.AppendFloat(b, f, 'g', -1, bits)
}
