package functions

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
)

// StrictJSON decodes a function's own JSON the way every handler must: exactly
// one value, unknown fields refused (names match case-insensitively, as
// encoding/json does), and every failure a *BadRequest naming the field.
type StrictJSON struct {
	// At prefixes field names in messages ("transactions[2]."); empty at the top.
	At string
	// Want says what a field must be where its Go kind says too little
	// ("candidates": "an array of integer item ids").
	Want map[string]string
	// Known follows the unknown-field message, e.g. "(known: user_id, k)".
	Known string
}

// Decode decodes raw into v.
func (s StrictJSON) Decode(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return s.bad(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Badf("%smalformed JSON: unexpected data after the top-level value", s.where())
	}
	return nil
}

// Object decodes raw as one JSON object, keys to raw values; null or
// another kind of value is refused with a message saying what the body must
// be (want, e.g. "a JSON object with user_id").
func (s StrictJSON) Object(raw []byte, want string) (map[string]json.RawMessage, error) {
	var top map[string]json.RawMessage
	if err := s.Decode(raw, &top); err != nil {
		return nil, err
	}
	if top == nil {
		return nil, Badf("request body must be %s", want)
	}
	return top, nil
}

func (s StrictJSON) where() string {
	if s.At == "" {
		return ""
	}
	return strings.TrimSuffix(s.At, ".") + ": "
}

func (s StrictJSON) bad(err error) error {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		field := s.At + typeErr.Field
		if typeErr.Field == "" {
			field = strings.TrimSuffix(s.At, ".")
		}
		if field == "" {
			return Badf("request body must be a JSON object, got a JSON %s", typeErr.Value)
		}
		want, ok := s.Want[typeErr.Field]
		if !ok {
			want = kindName(typeErr.Type.Kind().String())
		}
		return Badf("%s: must be %s, got JSON %s", field, want, typeErr.Value)
	case errors.As(err, &syntaxErr):
		return Badf("%smalformed JSON at byte %d: %v", s.where(), syntaxErr.Offset, syntaxErr)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return Badf("%smalformed JSON: unexpected end of input", s.where())
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		msg := s.At + name + ": unknown field"
		if s.Known != "" {
			msg += " " + s.Known
		}
		return Badf("%s", msg)
	}
	return Badf("%smalformed JSON: %v", s.where(), err)
}

// kindName says a Go kind as JSON words.
func kindName(k string) string {
	switch k {
	case "float64", "float32":
		return "a number"
	case "int", "int64", "int32":
		return "an integer"
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "slice":
		return "an array"
	case "map", "struct":
		return "an object"
	}
	return "a " + k
}
