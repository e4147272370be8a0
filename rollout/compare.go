package rollout

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/pilotlight/pilotlight/functions"
)

// protocol is how a shadowed request was sent, and so how its answers are
// read for comparing.
type protocol int

const (
	protocolFunction protocol = iota + 1 // the function's own JSON (POST /functions/{name})
	protocolV2REST                       // an Open Inference Protocol answer over REST (JSON outputs)
)

func (p protocol) String() string {
	switch p {
	case protocolFunction:
		return "function"
	case protocolV2REST:
		return "v2-rest"
	}
	return "unknown"
}

// compare asks the function's comparer in the request's protocol. An
// error means an answer could not be read: incomparable, not failed.
func compare(c functions.Comparer, p protocol, primary, candidate []byte) (functions.Comparison, error) {
	if c == nil {
		c = functions.TensorComparer{}
	}
	switch p {
	case protocolFunction:
		return c.CompareJSON(primary, candidate)
	case protocolV2REST:
		a, err := v2Outputs(primary)
		if err != nil {
			return functions.Comparison{}, fmt.Errorf("serving answer: %w", err)
		}
		b, err := v2Outputs(candidate)
		if err != nil {
			return functions.Comparison{}, fmt.Errorf("candidate answer: %w", err)
		}
		return c.CompareOutputs(a, b)
	}
	return functions.Comparison{}, fmt.Errorf("answers of protocol %s are not compared", p)
}

// v2Outputs reads the outputs of a V2 REST answer: data flat or nested,
// numbers or booleans (BYTES outputs are not compared).
func v2Outputs(raw []byte) ([]functions.Output, error) {
	var doc struct {
		Outputs []struct {
			Name     string          `json:"name"`
			Datatype string          `json:"datatype"`
			Shape    []int64         `json:"shape"`
			Data     json.RawMessage `json:"data"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	if len(doc.Outputs) == 0 {
		return nil, errors.New("no outputs")
	}
	out := make([]functions.Output, 0, len(doc.Outputs))
	for _, o := range doc.Outputs {
		if o.Datatype == "BYTES" {
			return nil, fmt.Errorf("output %q: BYTES outputs are not compared", o.Name)
		}
		var data any
		if err := json.Unmarshal(o.Data, &data); err != nil {
			return nil, fmt.Errorf("output %q: %w", o.Name, err)
		}
		flat, err := flatten(data, nil)
		if err != nil {
			return nil, fmt.Errorf("output %q: %w", o.Name, err)
		}
		out = append(out, functions.Output{Name: o.Name, Shape: o.Shape, Data: flat})
	}
	return out, nil
}

func flatten(v any, dst []float64) ([]float64, error) {
	switch x := v.(type) {
	case float64:
		return append(dst, x), nil
	case bool:
		if x {
			return append(dst, 1), nil
		}
		return append(dst, 0), nil
	case []any:
		var err error
		for _, e := range x {
			if dst, err = flatten(e, dst); err != nil {
				return nil, err
			}
		}
		return dst, nil
	}
	return nil, fmt.Errorf("element %v is not a number", v)
}
