package server

import (
	"unicode/utf8"

	"github.com/pilotlight/pilotlight/functions"
)

// maxJSONDepth bounds nesting in a request body; no request the platform
// serves nests deeper than a few levels.
const maxJSONDepth = 64

// smallObject is how many keys an object's duplicate check compares
// one by one; past it the object's keys go into a map.
const smallObject = 16

// checkJSON rejects, before any decoder sees them, the bodies encoding/json
// would quietly accept in a way a client did not mean: duplicate keys in an
// object (json takes the last, another parser the first), invalid UTF-8
// (json substitutes U+FFFD), and pathological nesting. It does not validate
// the rest of the grammar (the decoders do). One pass; keys are compared by
// their raw bytes where they sit in the body (escaped keys by their escaped
// form: good enough to catch repeats), so a body whose objects have up to
// smallObject keys and nest up to 16 levels allocates nothing.
func checkJSON(body []byte) error {
	type span struct{ start, end int }
	type frame struct {
		object bool
		expect bool                // in an object: the next string is a key
		first  int                 // where this object's keys start in keys
		set    map[string]struct{} // this object's keys once it has more than smallObject
	}
	var (
		stackArr [16]frame
		keysArr  [64]span
		stack    = stackArr[:0]
		keys     = keysArr[:0] // the keys of every open object, innermost last
	)
	for i := 0; i < len(body); i++ {
		switch c := body[i]; c {
		case '{', '[':
			if len(stack) >= maxJSONDepth {
				return functions.Badf("JSON nested deeper than %d levels", maxJSONDepth)
			}
			stack = append(stack, frame{object: c == '{', expect: c == '{', first: len(keys)})
		case '}', ']':
			if n := len(stack); n > 0 {
				keys = keys[:stack[n-1].first]
				stack = stack[:n-1]
			}
		case ',':
			if n := len(stack); n > 0 && stack[n-1].object {
				stack[n-1].expect = true
			}
		case '"':
			start := i + 1
			for i++; i < len(body); i++ {
				if body[i] == '\\' {
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
			n := len(stack)
			if n == 0 || !stack[n-1].object || !stack[n-1].expect {
				continue
			}
			f := &stack[n-1]
			f.expect = false
			dup := false
			switch {
			case f.set != nil:
				_, dup = f.set[string(s)]
				f.set[string(s)] = struct{}{}
			case len(keys)-f.first < smallObject:
				for _, k := range keys[f.first:] {
					if string(body[k.start:k.end]) == string(s) {
						dup = true
						break
					}
				}
				keys = append(keys, span{start, i})
			default: // the object outgrew the one-by-one comparison
				f.set = make(map[string]struct{}, 2*smallObject)
				for _, k := range keys[f.first:] {
					f.set[string(body[k.start:k.end])] = struct{}{}
				}
				_, dup = f.set[string(s)]
				f.set[string(s)] = struct{}{}
			}
			if dup {
				return functions.Badf("duplicate key %q in a JSON object at byte %d", s, start)
			}
		}
	}
	return nil
}
