package server

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// v2parser reads the V2 infer request envelope in one pass without
// reflection: encoding/json spent 15% of an instance's CPU here, scanning
// every input's data twice (validate, then copy into a RawMessage). Data
// stays a sub-slice of the body for decodeData. Duplicate keys and invalid
// UTF-8 were refused by checkJSON before this runs.
type v2parser struct {
	b []byte
	i int
}

func (p *v2parser) errorf(format string, args ...any) error {
	return fmt.Errorf("at byte %d: %s", p.i, fmt.Sprintf(format, args...))
}

func (p *v2parser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *v2parser) expect(c byte) error {
	p.ws()
	if p.i >= len(p.b) || p.b[p.i] != c {
		if p.i >= len(p.b) {
			return p.errorf("unexpected end of JSON, want %q", c)
		}
		return p.errorf("want %q, found %q", c, p.b[p.i])
	}
	p.i++
	return nil
}

// peek reports the next non-space byte (0 at the end).
func (p *v2parser) peek() byte {
	p.ws()
	if p.i >= len(p.b) {
		return 0
	}
	return p.b[p.i]
}

func (p *v2parser) str() (string, error) {
	p.ws()
	if p.i >= len(p.b) || p.b[p.i] != '"' {
		return "", p.errorf("want a string")
	}
	start := p.i
	escaped := false
	for p.i++; p.i < len(p.b); p.i++ {
		switch c := p.b[p.i]; {
		case c == '\\':
			escaped = true
			p.i++
		case c < 0x20:
			return "", p.errorf("control character in a string")
		case c == '"':
			p.i++
			if !escaped {
				return string(p.b[start+1 : p.i-1]), nil
			}
			var s string
			if err := json.Unmarshal(p.b[start:p.i], &s); err != nil {
				return "", p.errorf("bad string: %v", err)
			}
			return s, nil
		}
	}
	return "", p.errorf("unterminated string")
}

// skip passes over one JSON value of any kind, checking its structure.
func (p *v2parser) skip(depth int) error {
	if depth > maxJSONDepth {
		return p.errorf("nested deeper than %d levels", maxJSONDepth)
	}
	switch p.peek() {
	case '"':
		_, err := p.str()
		return err
	case '{':
		p.i++
		if p.peek() == '}' {
			p.i++
			return nil
		}
		for {
			if _, err := p.str(); err != nil {
				return err
			}
			if err := p.expect(':'); err != nil {
				return err
			}
			if err := p.skip(depth + 1); err != nil {
				return err
			}
			if p.peek() == ',' {
				p.i++
				continue
			}
			return p.expect('}')
		}
	case '[':
		p.i++
		if p.peek() == ']' {
			p.i++
			return nil
		}
		for {
			if err := p.skip(depth + 1); err != nil {
				return err
			}
			if p.peek() == ',' {
				p.i++
				continue
			}
			return p.expect(']')
		}
	case 0:
		return p.errorf("unexpected end of JSON")
	default:
		start := p.i
		for p.i < len(p.b) {
			c := p.b[p.i]
			if c == ',' || c == '}' || c == ']' || c == ' ' || c == '\t' || c == '\n' || c == '\r' {
				break
			}
			p.i++
		}
		tok := string(p.b[start:p.i])
		switch tok {
		case "true", "false", "null":
			return nil
		}
		if _, err := strconv.ParseFloat(tok, 64); err != nil || tok == "" || !json.Valid([]byte(tok)) {
			p.i = start
			return p.errorf("invalid value %q", tok)
		}
		return nil
	}
}

// span returns the bytes of the next value, checking only its brackets and
// strings: decodeData parses and validates every element afterwards, so
// the tensor's data is read in full only once.
func (p *v2parser) span() ([]byte, error) {
	p.ws()
	start, depth := p.i, 0
	for p.i < len(p.b) {
		switch c := p.b[p.i]; c {
		case '[', '{':
			depth++
			if depth > maxJSONDepth {
				return nil, p.errorf("nested deeper than %d levels", maxJSONDepth)
			}
		case ']', '}':
			if depth == 0 {
				return p.b[start:p.i:p.i], nil
			}
			depth--
			if depth == 0 {
				p.i++
				return p.b[start:p.i:p.i], nil
			}
		case ',':
			if depth == 0 {
				return p.b[start:p.i:p.i], nil
			}
		case '"':
			if _, err := p.str(); err != nil {
				return nil, err
			}
			if depth == 0 {
				return p.b[start:p.i:p.i], nil
			}
			continue
		}
		p.i++
	}
	if depth != 0 {
		return nil, p.errorf("unbalanced brackets in data")
	}
	return p.b[start:p.i:p.i], nil
}

// object calls field for each key of an object.
func (p *v2parser) object(field func(key string) error) error {
	if err := p.expect('{'); err != nil {
		return err
	}
	if p.peek() == '}' {
		p.i++
		return nil
	}
	for {
		key, err := p.str()
		if err != nil {
			return err
		}
		if err := p.expect(':'); err != nil {
			return err
		}
		if err := field(key); err != nil {
			return err
		}
		if p.peek() == ',' {
			p.i++
			continue
		}
		return p.expect('}')
	}
}

// array calls elem for each element of an array; null is an empty array.
func (p *v2parser) array(elem func() error) error {
	if p.peek() == 'n' {
		return p.null()
	}
	if err := p.expect('['); err != nil {
		return err
	}
	if p.peek() == ']' {
		p.i++
		return nil
	}
	for {
		if err := elem(); err != nil {
			return err
		}
		if p.peek() == ',' {
			p.i++
			continue
		}
		return p.expect(']')
	}
}

func (p *v2parser) null() error {
	p.ws()
	if len(p.b)-p.i >= 4 && string(p.b[p.i:p.i+4]) == "null" {
		p.i += 4
		return nil
	}
	return p.errorf("want null")
}

func (p *v2parser) int64() (int64, error) {
	p.ws()
	start := p.i
	for p.i < len(p.b) && (p.b[p.i] == '-' || (p.b[p.i] >= '0' && p.b[p.i] <= '9')) {
		p.i++
	}
	v, err := strconv.ParseInt(string(p.b[start:p.i]), 10, 64)
	if err != nil {
		p.i = start
		return 0, p.errorf("want an integer")
	}
	return v, nil
}

// parseInferRequest decodes a V2 infer request; unknown fields are errors.
// field is the envelope field key names: encoding/json matches names
// case-insensitively, and so must this parser (clients that worked before it
// keep working).
func field(key string, names ...string) string {
	for _, n := range names {
		if key == n {
			return n
		}
	}
	for _, n := range names {
		if strings.EqualFold(key, n) {
			return n
		}
	}
	return key
}

// strOrNull reads a string field; null leaves it as it was (as encoding/json does).
func (p *v2parser) strOrNull(dst *string) error {
	if p.peek() == 'n' {
		return p.null()
	}
	s, err := p.str()
	*dst = s
	return err
}

// params passes over a parameters object (null is none); anything else is
// refused, as encoding/json refuses it for a map.
func (p *v2parser) params(depth int) error {
	switch p.peek() {
	case 'n':
		return p.null()
	case '{':
		return p.skip(depth)
	}
	return p.errorf("parameters must be an object")
}

// elem reads one object element of an array; null is a zero element.
func (p *v2parser) elem(field func(key string) error) error {
	if p.peek() == 'n' {
		return p.null()
	}
	return p.object(field)
}

func parseInferRequest(body []byte) (*inferRequest, error) {
	p := &v2parser{b: body}
	req := &inferRequest{}
	err := p.elem(func(key string) error { // null: an empty envelope, as encoding/json reads it
		switch field(key, "id", "parameters", "inputs", "outputs") {
		case "id":
			return p.strOrNull(&req.ID)
		case "parameters":
			return p.params(1)
		case "inputs":
			req.Inputs = nil // a repeated key (another case) replaces, as in encoding/json
			return p.array(func() error {
				var in requestInput
				err := p.elem(func(key string) error {
					switch field(key, "name", "datatype", "shape", "parameters", "data") {
					case "name":
						return p.strOrNull(&in.Name)
					case "datatype":
						return p.strOrNull(&in.Datatype)
					case "shape":
						in.Shape = []int64{}
						if p.peek() == 'n' {
							in.Shape = nil
						}
						return p.array(func() error {
							v, err := p.int64()
							in.Shape = append(in.Shape, v)
							return err
						})
					case "parameters":
						return p.params(2)
					case "data":
						d, err := p.span()
						in.Data = d
						return err
					}
					return fmt.Errorf("json: unknown field %q in an input", key)
				})
				req.Inputs = append(req.Inputs, in)
				return err
			})
		case "outputs":
			req.Outputs = nil
			return p.array(func() error {
				var out requestOutput
				err := p.elem(func(key string) error {
					switch field(key, "name", "parameters") {
					case "name":
						return p.strOrNull(&out.Name)
					case "parameters":
						return p.params(2)
					}
					return fmt.Errorf("json: unknown field %q in an output", key)
				})
				req.Outputs = append(req.Outputs, out)
				return err
			})
		}
		return fmt.Errorf("json: unknown field %q", key)
	})
	if err != nil {
		return nil, err
	}
	if p.ws(); p.i < len(p.b) { // not peek: a NUL byte is data too
		return nil, p.errorf("trailing data after the JSON object")
	}
	return req, nil
}
