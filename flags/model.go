package flags

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
)

// Flag states.
const (
	StateEnabled  = "ENABLED"
	StateDisabled = "DISABLED"
)

// maxSafeInt is the largest integer every JSON parser represents exactly;
// flagd (ADR numeric-coercion) rejects numeric variants beyond it.
const maxSafeInt = 1<<53 - 1

// File is a flag file in flagd's JSON format, as written.
type File struct {
	Schema     string                     `json:"$schema,omitempty"`
	Flags      map[string]Flag            `json:"flags"`
	Evaluators map[string]json.RawMessage `json:"$evaluators,omitempty"`
	Metadata   map[string]any             `json:"metadata,omitempty"`
}

// Flag is one flag of a File.
type Flag struct {
	State    string         `json:"state"`
	Variants map[string]any `json:"variants"`
	// DefaultVariant is nil when the file says null or leaves it out: the
	// caller's own default ("code default") is used when nothing else decides.
	DefaultVariant *string         `json:"defaultVariant"`
	Targeting      json.RawMessage `json:"targeting,omitempty"`
	Metadata       map[string]any  `json:"metadata,omitempty"`
}

// Severities of a Problem.
const (
	// SeverityError: flagd refuses to load the file (malformed JSON, a field
	// of the wrong JSON type, a defaultVariant that is not a variant, an
	// empty evaluator). Pilotlight refuses it too.
	SeverityError = "error"
	// SeverityWarning: flagd loads the file and evaluates the flag by its own
	// rules (an operator given bad input yields null, so the default variant;
	// a $ref to a missing evaluator is a PARSE_ERROR for that flag only), so
	// Pilotlight serves it the same way and says what is odd.
	SeverityWarning = "warning"
)

// Problem is one thing wrong with a flag file: where (a JSON path such as
// $.flags.fraud-revision.defaultVariant), what, and whether flagd refuses
// the file for it (error) or loads it anyway (warning).
type Problem struct {
	Path     string `json:"path"`
	Msg      string `json:"msg"`
	Severity string `json:"severity"`
}

func (p Problem) String() string { return p.Severity + ": " + p.Path + ": " + p.Msg }

// ProblemsError is Parse's error: every error-severity problem in the file.
type ProblemsError []Problem

func (e ProblemsError) Error() string {
	parts := make([]string, len(e))
	for i, p := range e {
		parts[i] = p.Path + ": " + p.Msg
	}
	return "invalid flag file: " + strings.Join(parts, "; ")
}

// Errors keeps the problems flagd refuses a file for.
func Errors(ps []Problem) []Problem {
	var out []Problem
	for _, p := range ps {
		if p.Severity == SeverityError {
			out = append(out, p)
		}
	}
	return out
}

// Set is a parsed, validated flag file. It is immutable: evaluate it from
// any number of goroutines.
type Set struct {
	flags    map[string]*flag
	metadata map[string]any
	version  string
	warnings []Problem
}

type flag struct {
	key        string
	state      string
	variants   map[string]any
	defVariant string // "" with hasDefault false: code default
	hasDefault bool
	targeting  any  // $ref resolved
	targeted   bool // the flag has targeting other than {} (even null: flagd evaluates it)
	// reads are the top-level context attributes the targeting reads with
	// var; readsAll when a var path is computed, empty or an index.
	reads    map[string]bool
	readsAll bool
	// inputs are what Inputs reports: every attribute the targeting can
	// read, when inputsKnown proves the list complete.
	inputs      []string
	inputsKnown bool
	// deferrable flags read the targeting key only to split by it: they
	// can be evaluated without it (EvaluateDeferred) by running deferRule,
	// where deferMarks[i] stands for the split deferSplits[i]; deferInputs
	// are the inputs besides the key.
	deferrable  bool
	deferRule   any
	deferMarks  []any
	deferSplits [][]any
	deferInputs []string
	// parseErr is set when flagd could not run the targeting at all (a $ref
	// it could not substitute): every evaluation is ERROR / PARSE_ERROR.
	parseErr string
	metadata map[string]any
	raw      Flag
	flagd    atomic.Pointer[flagdProps] // this second's $flagd, shared by evaluations
}

// Reads reports whether evaluating the flag can read the context
// attribute name (a top-level key: "headers" for {"var": "headers.x-a"}):
// false for flags without targeting, true when a var path is computed.
// A caller may leave out of the context what no flag it evaluates reads.
func (s *Set) Reads(flagKey, name string) bool {
	f, ok := s.flags[flagKey]
	return ok && f.targeted && (f.readsAll || f.reads[name])
}

// attributesRead adds to names the top-level attributes rule reads with
// var (and missing, missing_some), and reports true when it cannot tell
// (a computed, empty or numeric path).
func attributesRead(rule any, names map[string]bool) (all bool) {
	switch n := rule.(type) {
	case map[string]any:
		for op, args := range n {
			switch op {
			case "var":
				path := args
				if list, ok := args.([]any); ok {
					if len(list) == 0 {
						return true
					}
					path = list[0]
					for _, d := range list[1:] { // the default may itself be a rule
						all = attributesRead(d, names) || all
					}
				}
				p, ok := path.(string)
				if !ok || p == "" {
					return true
				}
				top, _, _ := strings.Cut(p, ".")
				names[top] = true
			case "missing", "missing_some":
				return true
			default:
				all = attributesRead(args, names) || all
			}
		}
	case []any:
		for _, a := range n {
			all = attributesRead(a, names) || all
		}
	}
	return all
}

// Version identifies the Set's content: the hex SHA-256 of the file's bytes.
// Two loads of an identical file have the same version.
func (s *Set) Version() string { return s.version }

// Keys lists the flag keys, sorted.
func (s *Set) Keys() []string { return slices.Sorted(maps.Keys(s.flags)) }

// Flag returns a flag as the file defines it, with $ref evaluators already
// substituted into Targeting.
func (s *Set) Flag(key string) (Flag, bool) {
	f, ok := s.flags[key]
	if !ok {
		return Flag{}, false
	}
	return f.raw, true
}

// Metadata is the file's flag-set metadata (do not modify it).
func (s *Set) Metadata() map[string]any { return s.metadata }

// Warnings are the file's tolerated oddities (see SeverityWarning).
func (s *Set) Warnings() []Problem { return s.warnings }

// Parse reads and validates a flag file. A file flagd refuses is refused:
// the error is a ProblemsError listing every error-severity problem. A file
// flagd loads is loaded, its oddities in Set.Warnings.
func Parse(raw []byte) (*Set, error) {
	s, problems := parse(raw)
	if errs := Errors(problems); len(errs) > 0 {
		return nil, ProblemsError(errs)
	}
	s.warnings = problems
	return s, nil
}

// decode reads a flag file's JSON into its generic form: the one JSON
// decoding of the flagd format (Parse and FlagEdit both start here).
func decode(raw []byte) (map[string]any, *Problem) {
	var doc any
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&doc); err != nil {
		return nil, &Problem{Path: "$", Msg: jsonErrorAt(raw, err), Severity: SeverityError}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		off := dec.InputOffset()
		line, col := lineCol(raw, off)
		return nil, &Problem{Path: "$", Msg: fmt.Sprintf("unexpected data after the top-level value at line %d column %d (offset %d)", line, col, off), Severity: SeverityError}
	}
	top, ok := doc.(map[string]any)
	if !ok {
		return nil, &Problem{Path: "$", Msg: fmt.Sprintf("the file must be a JSON object with a \"flags\" object, not %s", kindOf(doc)), Severity: SeverityError}
	}
	return top, nil
}

func parse(raw []byte) (*Set, []Problem) {
	v := &validator{}
	top, p := decode(raw)
	if p != nil {
		return nil, []Problem{*p}
	}
	for _, k := range slices.Sorted(maps.Keys(top)) {
		switch k {
		case "$schema", "flags", "$evaluators", "metadata":
		default:
			v.warn(pathKey("$", k), "unknown top-level property, ignored (flagd knows $schema, flags, $evaluators, metadata)")
		}
	}
	if s, ok := top["$schema"]; ok {
		if _, isStr := s.(string); !isStr {
			v.warn("$.$schema", "should be a string, not %s", kindOf(s))
		}
	}
	setMeta := v.metadata("$.metadata", top["metadata"])

	v.evaluators = map[string]any{}
	if evs, ok := top["$evaluators"]; ok && evs != nil {
		m, isMap := evs.(map[string]any)
		if !isMap {
			v.add("$.$evaluators", "must be an object of named JSONLogic rules, not %s", kindOf(evs))
		}
		for _, name := range slices.Sorted(maps.Keys(m)) {
			ev := m[name]
			// flagd refuses an evaluator whose JSON text is shorter than 3
			// bytes ({}, [], "", 1, 12); anything else it substitutes.
			if text, _ := json.Marshal(ev); len(text) < 3 {
				v.add(pathKey("$.$evaluators", name), "an evaluator must be a non-empty JSONLogic object, not %s", text)
				continue
			}
			if body, isObj := ev.(map[string]any); !isObj || len(body) == 0 {
				v.warn(pathKey("$.$evaluators", name), "an evaluator should be a JSONLogic object, not %s", kindOf(ev))
			}
			v.evaluators[name] = ev
		}
		// Check each evaluator's own references and operators once, here;
		// flags that use it get the substituted rule.
		for _, name := range slices.Sorted(maps.Keys(v.evaluators)) {
			p := pathKey("$.$evaluators", name)
			v.unresolved = ""
			resolved := v.resolveRefs(p, v.evaluators[name], []string{name})
			v.logic(p, resolved, nil, false)
		}
	}

	s := &Set{flags: map[string]*flag{}, metadata: setMeta}
	sum := sha256.Sum256(raw)
	s.version = hex.EncodeToString(sum[:])

	flagsNode, ok := top["flags"]
	if !ok || flagsNode == nil {
		v.add("$", "missing \"flags\" object")
		return nil, v.problems
	}
	switch fl := flagsNode.(type) {
	case map[string]any:
		for _, key := range slices.Sorted(maps.Keys(fl)) {
			if f := v.flag(pathKey("$.flags", key), key, fl[key], setMeta, false); f != nil {
				s.flags[key] = f
			}
		}
	case []any:
		// flagd also takes flags as an array of objects with a "key"; a
		// later flag of the same key replaces an earlier one.
		for i, node := range fl {
			p := pathIndex("$.flags", i)
			m, _ := node.(map[string]any)
			key, isStr := m["key"].(string)
			if !isStr {
				v.add(p+".key", "a flag in a flags array needs a string key")
				continue
			}
			if f := v.flag(p, key, node, setMeta, true); f != nil {
				s.flags[key] = f
			}
		}
	default:
		v.add("$.flags", "must be an object of flags, not %s", kindOf(flagsNode))
		return nil, v.problems
	}
	if len(Errors(v.problems)) > 0 {
		return nil, v.problems
	}
	return s, v.problems
}
