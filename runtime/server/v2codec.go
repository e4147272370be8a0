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
	if len(req.Inputs) == 0 {
		return nil, nil, 0, functions.Badf("infer request has no inputs; the model needs %s", ioNames(inputs))
	}
	declared := make(map[string]ort.IO, len(inputs))
	for _, io := range inputs {
		declared[io.Name] = io
	}
	seen := map[string]bool{}
	rows = -1
	for i, in := range req.Inputs {
		io, ok := declared[in.Name]
		if !ok {
			return nil, nil, 0, functions.Badf("inputs[%d]: unknown input %q; the model's inputs are %s", i, in.Name, ioNames(inputs))
		}
		if seen[in.Name] {
			return nil, nil, 0, functions.Badf("inputs[%d]: input %q given twice", i, in.Name)
		}
		seen[in.Name] = true
		if tensor.Datatype(in.Datatype) != io.Datatype {
			return nil, nil, 0, functions.Badf("input %q: datatype %q, the model expects %s", in.Name, in.Datatype, io.Datatype)
		}
		if len(in.Shape) != len(io.Shape) {
			return nil, nil, 0, functions.Badf("input %q: shape %v has %d dimensions, the model expects %d (%v, -1 = any)", in.Name, in.Shape, len(in.Shape), len(io.Shape), io.Shape)
		}
		for d := range in.Shape {
			if in.Shape[d] < 0 {
				return nil, nil, 0, functions.Badf("input %q: shape[%d] is %d; dimensions must be >= 0", in.Name, d, in.Shape[d])
			}
			if io.Shape[d] >= 0 && in.Shape[d] != io.Shape[d] {
				return nil, nil, 0, functions.Badf("input %q: shape %v does not match the model's %v at dimension %d", in.Name, in.Shape, io.Shape, d)
			}
		}
		n, err := tensor.Elements(in.Shape)
		if err != nil || n > maxTensorElements {
			return nil, nil, 0, functions.Badf("input %q: shape %v is too large (at most %d elements)", in.Name, in.Shape, maxTensorElements)
		}
		if len(in.Shape) > 0 && io.Shape[0] < 0 {
			if rows >= 0 && int(in.Shape[0]) != rows {
				return nil, nil, 0, functions.Badf("input %q: %d rows, but other inputs have %d", in.Name, in.Shape[0], rows)
			}
			rows = int(in.Shape[0])
		}
		if len(in.Data) == 0 {
			return nil, nil, 0, functions.Badf("input %q: data is required", in.Name)
		}
		t := &tensor.Tensor{Name: in.Name, Datatype: io.Datatype, Shape: in.Shape}
		if t.Data, err = decodeData(in.Data, io.Datatype, int(n)); err != nil {
			return nil, nil, 0, functions.Badf("input %q: %v", in.Name, err)
		}
		if err := t.Validate(); err != nil {
			return nil, nil, 0, functions.Badf("%v", err)
		}
		ts = append(ts, t)
	}
	for _, io := range inputs {
		if !seen[io.Name] {
			return nil, nil, 0, functions.Badf("missing input %q (%s %v)", io.Name, io.Datatype, io.Shape)
		}
	}
	outNames := map[string]bool{}
	for _, o := range outputs {
		outNames[o.Name] = true
	}
	for i, o := range req.Outputs {
		if !outNames[o.Name] {
			return nil, nil, 0, functions.Badf("outputs[%d]: unknown output %q; the model's outputs are %s", i, o.Name, ioNames(outputs))
		}
	}
	if rows < 0 {
		rows = 1
	}
	if rows == 0 {
		return nil, nil, 0, functions.Badf("inputs have 0 rows; send at least one")
	}
	return req, ts, rows, nil
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
	case tensor.INT64:
		out := make([]int64, 0, want)
		err := scanTokens(raw, want, func(tok []byte) error {
			v, err := strconv.ParseInt(string(tok), 10, 64)
			if err != nil {
				return fmt.Errorf("%s is not an INT64", tok)
			}
			out = append(out, v)
			return nil
		})
		return out, err
	case tensor.INT32:
		out := make([]int32, 0, want)
		err := scanTokens(raw, want, func(tok []byte) error {
			v, err := strconv.ParseInt(string(tok), 10, 32)
			if err != nil {
				return fmt.Errorf("%s is not an INT32", tok)
			}
			out = append(out, int32(v))
			return nil
		})
		return out, err
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
		return out, walk(nested, 0)
	}
	return nil, fmt.Errorf("datatype %s is not served", dt)
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
	case []int64:
		for i, v := range d {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(b, v, 10)
		}
	case []int32:
		for i, v := range d {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(b, int64(v), 10)
		}
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

// appendFloat writes a finite float; a model that produced NaN or Inf gets
// null, since JSON has no such numbers.
func appendFloat(b []byte, f float64, bits int) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(b, "null"...)
	}
	return strconv.AppendFloat(b, f, 'g', -1, bits)
}
