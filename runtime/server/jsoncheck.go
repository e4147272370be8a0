package server

import (
	"unicode/utf8"

	"github.com/pilotlight/pilotlight/functions"
)

// maxJSONDepth bounds nesting in a request body; no request the platform
// serves nests deeper than a few levels.
const maxJSONDepth = 64

// checkJSON rejects, before any decoder sees them, the bodies encoding/json
// would quietly accept in a way a client did not mean: duplicate keys in an
// object (json takes the last, another parser the first), invalid UTF-8
// (json substitutes U+FFFD), and pathological nesting. It does not validate
// the rest of the grammar (the decoders do) and allocates nothing per
// value: a single pass with a small stack of key sets.
func checkJSON(body []byte) error {
	type frame struct {
		object bool
		keys   map[string]struct{}
		expect bool // in an object: the next string is a key
	}
	var stack []frame
	for i := 0; i < len(body); i++ {
		switch c := body[i]; c {
		case '{', '[':
			if len(stack) >= maxJSONDepth {
				return functions.Badf("JSON nested deeper than %d levels", maxJSONDepth)
			}
			stack = append(stack, frame{object: c == '{', expect: c == '{'})
		case '}', ']':
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
		case ',':
			if n := len(stack); n > 0 && stack[n-1].object {
				stack[n-1].expect = true
			}
		case '"':
			start := i + 1
			escaped := false
			for i++; i < len(body); i++ {
				if body[i] == '\\' {
					escaped = true
					i++
					continue
				}
				if body[i] == '"' {
					break
				}
			}
			if i >= len(body) {
				return nil // unterminated: the decoder reports it
			}
			s := body[start:i]
			if !utf8.Valid(s) {
				return functions.Badf("invalid UTF-8 in a JSON string at byte %d", start)
			}
			if n := len(stack); n > 0 && stack[n-1].object && stack[n-1].expect {
				f := &stack[n-1]
				f.expect = false
				key := string(s)
				if escaped {
					key = "\x00" + key // escaped keys compare by their raw form; good enough to catch repeats
				}
				if f.keys == nil {
					f.keys = make(map[string]struct{}, 8)
				}
				if _, dup := f.keys[key]; dup {
					return functions.Badf("duplicate key %q in a JSON object at byte %d", s, start)
				}
				f.keys[key] = struct{}{}
			}
		}
	}
	return nil
}
