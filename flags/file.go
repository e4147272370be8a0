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
	"math"
	"slices"
	"strconv"
	"strings"
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

// Problem is one thing wrong with a flag file: where (a JSON path such as
// $.flags.fraud-revision.defaultVariant) and what.
type Problem struct {
	Path string `json:"path"`
	Msg  string `json:"msg"`
}

func (p Problem) String() string { return p.Path + ": " + p.Msg }

// ProblemsError is Parse's error: every problem in the file.
type ProblemsError []Problem

func (e ProblemsError) Error() string {
	parts := make([]string, len(e))
	for i, p := range e {
		parts[i] = p.String()
	}
	return "invalid flag file: " + strings.Join(parts, "; ")
}

// Set is a parsed, validated flag file. It is immutable: evaluate it from
// any number of goroutines.
type Set struct {
	flags    map[string]*flag
	metadata map[string]any
	version  string
}

type flag struct {
	key        string
	state      string
	variants   map[string]any
	defVariant string // "" with hasDefault false: code default
	hasDefault bool
	targeting  any // $ref resolved; nil: no targeting
	metadata   map[string]any
	raw        Flag
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

// Parse reads and validates a flag file. Any problem rejects the whole file:
// the error is a ProblemsError listing them all.
func Parse(raw []byte) (*Set, error) {
	s, problems := parse(raw)
	if len(problems) > 0 {
		return nil, ProblemsError(problems)
	}
	return s, nil
}

// Validate reports every problem in a flag file (nil when there are none).
func Validate(raw []byte) []Problem {
	_, problems := parse(raw)
	return problems
}

type validator struct {
	problems      []Problem
	evaluators    map[string]any
	badEvaluators map[string]bool // already reported under $.$evaluators
	nodes         int             // JSONLogic nodes after $ref substitution
}

// maxRuleNodes bounds $ref substitution: evaluators that use each other
// twice at every level would otherwise grow exponentially.
const maxRuleNodes = 1 << 18

func (v *validator) add(path, format string, args ...any) {
	v.problems = append(v.problems, Problem{Path: path, Msg: fmt.Sprintf(format, args...)})
}

func parse(raw []byte) (*Set, []Problem) {
	v := &validator{}
	var doc any
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&doc); err != nil {
		v.add("$", "%s", jsonErrorAt(raw, err))
		return nil, v.problems
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		off := dec.InputOffset()
		line, col := lineCol(raw, off)
		v.add("$", "unexpected data after the top-level value at line %d column %d (offset %d)", line, col, off)
		return nil, v.problems
	}
	top, ok := doc.(map[string]any)
	if !ok {
		v.add("$", "the file must be a JSON object with a \"flags\" object, not %s", kindOf(doc))
		return nil, v.problems
	}
	for _, k := range slices.Sorted(maps.Keys(top)) {
		switch k {
		case "$schema", "flags", "$evaluators", "metadata":
		default:
			v.add(pathKey("$", k), "unknown top-level property (flagd knows $schema, flags, $evaluators, metadata)")
		}
	}
	if s, ok := top["$schema"]; ok {
		if _, isStr := s.(string); !isStr {
			v.add("$.$schema", "must be a string, not %s", kindOf(s))
		}
	}
	setMeta := v.metadata("$.metadata", top["metadata"])

	v.evaluators = map[string]any{}
	if evs, ok := top["$evaluators"]; ok {
		m, isMap := evs.(map[string]any)
		if !isMap {
			v.add("$.$evaluators", "must be an object of named JSONLogic rules, not %s", kindOf(evs))
		}
		for _, name := range slices.Sorted(maps.Keys(m)) {
			body, isObj := m[name].(map[string]any)
			if !isObj || len(body) == 0 {
				v.add(pathKey("$.$evaluators", name), "an evaluator must be a non-empty JSONLogic object, not %s", kindOf(m[name]))
				continue
			}
			v.evaluators[name] = body
		}
		// Check each evaluator's own references and operators once, here;
		// flags that use it get the substituted rule.
		v.badEvaluators = map[string]bool{}
		for _, name := range slices.Sorted(maps.Keys(v.evaluators)) {
			p := pathKey("$.$evaluators", name)
			before := len(v.problems)
			resolved := v.resolveRefs(p, v.evaluators[name], []string{name})
			v.logic(p, resolved, nil, false)
			if len(v.problems) > before {
				v.badEvaluators[name] = true
			}
		}
	}

	s := &Set{flags: map[string]*flag{}, metadata: setMeta}
	sum := sha256.Sum256(raw)
	s.version = hex.EncodeToString(sum[:])

	flagsNode, ok := top["flags"]
	if !ok {
		v.add("$", "missing \"flags\" object")
		return nil, v.problems
	}
	flags, ok := flagsNode.(map[string]any)
	if !ok {
		v.add("$.flags", "must be an object of flags, not %s", kindOf(flagsNode))
		return nil, v.problems
	}
	for _, key := range slices.Sorted(maps.Keys(flags)) {
		if f := v.flag(pathKey("$.flags", key), key, flags[key], setMeta); f != nil {
			s.flags[key] = f
		}
	}
	if len(v.problems) > 0 {
		return nil, v.problems
	}
	return s, nil
}

func (v *validator) metadata(path string, node any) map[string]any {
	if node == nil {
		return map[string]any{}
	}
	m, ok := node.(map[string]any)
	if !ok {
		v.add(path, "must be an object, not %s", kindOf(node))
		return map[string]any{}
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		switch m[k].(type) {
		case string, bool, float64:
		default:
			v.add(pathKey(path, k), "metadata values must be strings, numbers or booleans, not %s", kindOf(m[k]))
		}
	}
	return m
}

func (v *validator) flag(path, key string, node any, setMeta map[string]any) *flag {
	m, ok := node.(map[string]any)
	if !ok {
		v.add(path, "a flag must be an object, not %s", kindOf(node))
		return nil
	}
	before := len(v.problems)
	for _, k := range slices.Sorted(maps.Keys(m)) {
		switch k {
		case "state", "variants", "defaultVariant", "targeting", "metadata":
		default:
			v.add(pathKey(path, k), "unknown flag property (flagd knows state, variants, defaultVariant, targeting, metadata)")
		}
	}
	f := &flag{key: key}
	switch st := m["state"].(type) {
	case string:
		if st != StateEnabled && st != StateDisabled {
			v.add(path+".state", "state %q is neither ENABLED nor DISABLED", st)
		}
		f.state = st
	case nil:
		v.add(path+".state", "missing state (ENABLED or DISABLED)")
	default:
		v.add(path+".state", "state must be the string ENABLED or DISABLED, not %s", kindOf(st))
	}

	f.variants = map[string]any{}
	switch vs := m["variants"].(type) {
	case map[string]any:
		if len(vs) == 0 {
			v.add(path+".variants", "no variants: a flag needs at least one")
		}
		kinds := map[string][]string{}
		for _, name := range slices.Sorted(maps.Keys(vs)) {
			val := vs[name]
			vp := pathKey(path+".variants", name)
			k := variantKind(val)
			switch k {
			case "":
				v.add(vp, "a variant value must be a boolean, string, number or object, not %s", kindOf(val))
				continue
			case "number":
				if n := val.(float64); math.Abs(n) > maxSafeInt && n == math.Trunc(n) {
					v.add(vp, "%v is outside the JSON-safe integer range ±(2^53-1)", n)
				}
			}
			kinds[k] = append(kinds[k], name)
			f.variants[name] = val
		}
		if len(kinds) > 1 {
			var parts []string
			for _, k := range slices.Sorted(maps.Keys(kinds)) {
				parts = append(parts, fmt.Sprintf("%s (%s)", k, strings.Join(kinds[k], ", ")))
			}
			v.add(path+".variants", "variants mix types: %s; all of a flag's variants must have one type", strings.Join(parts, ", "))
		}
	case nil:
		v.add(path+".variants", "missing variants")
	default:
		v.add(path+".variants", "variants must be an object of name: value, not %s", kindOf(vs))
	}

	switch dv := m["defaultVariant"].(type) {
	case nil: // null or absent: code default
	case string:
		if _, ok := f.variants[dv]; !ok && len(f.variants) > 0 {
			v.add(path+".defaultVariant", "defaultVariant %q is not one of the variants (%s)", dv, strings.Join(slices.Sorted(maps.Keys(f.variants)), ", "))
		}
		f.defVariant, f.hasDefault = dv, true
	default:
		v.add(path+".defaultVariant", "defaultVariant must be a variant name or null, not %s", kindOf(dv))
	}

	flagMeta := v.metadata(path+".metadata", m["metadata"])
	f.metadata = make(map[string]any, len(setMeta)+len(flagMeta))
	maps.Copy(f.metadata, setMeta)
	maps.Copy(f.metadata, flagMeta)

	if t, ok := m["targeting"]; ok && t != nil {
		tp := path + ".targeting"
		tm, isObj := t.(map[string]any)
		switch {
		case !isObj:
			v.add(tp, "targeting must be a JSONLogic object, not %s", kindOf(t))
		case len(tm) == 0: // {}: no targeting, as flagd
		default:
			resolved := v.resolveRefs(tp, tm, nil)
			v.logic(tp, resolved, f, true)
			f.targeting = resolved
		}
	}
	if len(v.problems) > before {
		return nil
	}
	f.raw = Flag{State: f.state, Variants: f.variants, Metadata: flagMeta}
	if f.hasDefault {
		d := f.defVariant
		f.raw.DefaultVariant = &d
	}
	if f.targeting != nil {
		f.raw.Targeting, _ = json.Marshal(f.targeting)
	}
	return f
}

// resolveRefs substitutes {"$ref": "name"} with the evaluator's rule, as
// flagd does textually: the evaluator's keys join the object's other keys.
func (v *validator) resolveRefs(path string, node any, stack []string) any {
	v.nodes++
	if v.nodes == maxRuleNodes {
		v.add(path, "more than %d JSONLogic nodes after substituting $ref evaluators", maxRuleNodes)
	}
	if v.nodes >= maxRuleNodes {
		return nil
	}
	switch n := node.(type) {
	case map[string]any:
		out := make(map[string]any, len(n))
		if ref, ok := n["$ref"]; ok {
			name, isStr := ref.(string)
			ev, found := v.evaluators[name]
			switch {
			case !isStr:
				v.add(path+".$ref", "$ref must name an evaluator, not %s", kindOf(ref))
			case !found:
				v.add(path+".$ref", "$ref %q names no evaluator in $evaluators (have: %s)", name, strings.Join(slices.Sorted(maps.Keys(v.evaluators)), ", "))
			case slices.Contains(stack, name):
				v.add(path+".$ref", "$ref %q refers to itself through %s", name, strings.Join(append(stack, name), " -> "))
			case len(stack) == 0 && v.badEvaluators[name]:
				v.add(path+".$ref", "$ref %q names an evaluator with problems (see %s)", name, pathKey("$.$evaluators", name))
			default:
				inner := v.resolveRefs(path+".$ref", ev, append(slices.Clone(stack), name))
				if im, ok := inner.(map[string]any); ok {
					maps.Copy(out, im)
				}
			}
		}
		for k, val := range n {
			if k == "$ref" {
				continue
			}
			out[k] = v.resolveRefs(pathKey(path, k), val, stack)
		}
		return out
	case []any:
		out := make([]any, len(n))
		for i, e := range n {
			out[i] = v.resolveRefs(pathIndex(path, i), e, stack)
		}
		return out
	default:
		return node
	}
}

// standardOps are the operators of github.com/diegoholiveira/jsonlogic/v3.
var standardOps = map[string]bool{
	"==": true, "===": true, "!=": true, "!==": true, ">": true, ">=": true, "<": true, "<=": true,
	"!": true, "!!": true, "or": true, "and": true, "?:": true, "in": true, "in_sorted": true,
	"cat": true, "%": true, "abs": true, "max": true, "min": true, "+": true, "-": true, "*": true, "/": true,
	"substr": true, "merge": true, "if": true, "missing": true, "missing_some": true,
	"some": true, "filter": true, "map": true, "reduce": true, "all": true, "none": true, "set": true, "var": true,
}

func knownOp(op string) bool {
	return standardOps[op] || op == opFractional || op == opSemVer || op == opStartsWith || op == opEndsWith
}

// logic checks a JSONLogic node. f is the flag whose variants a literal
// outcome must name, and outcome says whether this node's value becomes the
// flag's variant (the targeting itself, branches of if and ?:, fractional
// variant names).
func (v *validator) logic(path string, node any, f *flag, outcome bool) {
	switch n := node.(type) {
	case map[string]any:
		if len(n) == 0 {
			return
		}
		if len(n) > 1 {
			v.add(path, "object with %d keys (%s): a JSONLogic operation has exactly one operator key", len(n), strings.Join(slices.Sorted(maps.Keys(n)), ", "))
			return
		}
		for op, args := range n {
			p := pathKey(path, op)
			if !knownOp(op) {
				if op == "$ref" {
					return // already reported by resolveRefs
				}
				v.add(p, "unknown JSONLogic operator %q", op)
				return
			}
			switch op {
			case "if":
				list, ok := args.([]any)
				if !ok {
					v.logic(p, args, f, outcome)
					return
				}
				for i, a := range list {
					isOutcome := i%2 == 1 || (i == len(list)-1)
					v.logic(pathIndex(p, i), a, f, outcome && isOutcome)
				}
			case "?:":
				list, ok := args.([]any)
				if !ok || len(list) != 3 {
					v.add(p, "?: takes [condition, then, else]")
					return
				}
				for i, a := range list {
					v.logic(pathIndex(p, i), a, f, outcome && i > 0)
				}
			case opFractional:
				v.fractional(p, args, f, outcome)
			case opSemVer:
				v.semVer(p, args, f)
			case opStartsWith, opEndsWith:
				list, ok := args.([]any)
				if !ok || len(list) != 2 {
					v.add(p, "%s takes [value, %s]", op, map[string]string{opStartsWith: "prefix", opEndsWith: "suffix"}[op])
					return
				}
				for i, a := range list {
					if isLiteral(a) && a != nil {
						if _, isStr := a.(string); !isStr {
							v.add(pathIndex(p, i), "%s compares strings, not %s", op, kindOf(a))
						}
					}
					v.logic(pathIndex(p, i), a, f, false)
				}
			default:
				v.args(p, args, f)
			}
		}
	case []any:
		v.args(path, n, f)
	default:
		if outcome && f != nil {
			v.outcome(path, n, f)
		}
	}
}

func (v *validator) args(path string, args any, f *flag) {
	switch a := args.(type) {
	case []any:
		for i, e := range a {
			v.logic(pathIndex(path, i), e, f, false)
		}
	case map[string]any:
		v.logic(path, a, f, false)
	}
}

// outcome checks a literal that targeting returns as the variant name.
func (v *validator) outcome(path string, lit any, f *flag) {
	if lit == nil || len(f.variants) == 0 {
		return
	}
	name, ok := variantName(lit)
	if !ok {
		return
	}
	if _, ok := f.variants[name]; !ok {
		v.add(path, "targeting returns variant %q, which flag %q does not define (variants: %s)", name, f.key, strings.Join(slices.Sorted(maps.Keys(f.variants)), ", "))
	}
}

func (v *validator) fractional(path string, args any, f *flag, outcome bool) {
	list, ok := args.([]any)
	if !ok {
		v.add(path, "fractional takes [bucketing value?, [variant, weight]...], not %s", kindOf(args))
		return
	}
	dists := list
	if len(list) > 0 {
		switch first := list[0].(type) {
		case string, nil:
			dists = list[1:]
		case map[string]any:
			v.logic(pathIndex(path, 0), first, f, false)
			dists = list[1:]
		case []any:
		default:
			v.add(pathIndex(path, 0), "the bucketing value must be a string or an expression giving one, not %s (flagd hashes strings only)", kindOf(first))
			dists = list[1:]
		}
	}
	if len(dists) == 0 {
		v.add(path, "fractional needs at least one [variant, weight] pair")
		return
	}
	offset := len(list) - len(dists)
	var total int64
	allLiteral, badWeight := true, false
	for i, d := range dists {
		dp := pathIndex(path, i+offset)
		switch dd := d.(type) {
		case map[string]any:
			allLiteral = false
			v.logic(dp, dd, f, false)
			continue
		case []any:
			if len(dd) == 0 || len(dd) > 2 {
				v.add(dp, "a fractional bucket is [variant, weight], not %d elements", len(dd))
				continue
			}
			switch name := dd[0].(type) {
			case map[string]any:
				v.logic(pathIndex(dp, 0), name, f, outcome)
			case []any:
				v.add(pathIndex(dp, 0), "a bucket's variant must be a string, boolean, number, null or an expression, not an array")
			default:
				if outcome && f != nil {
					v.outcome(pathIndex(dp, 0), name, f)
				}
			}
			if len(dd) == 1 {
				total++
				continue
			}
			switch w := dd[1].(type) {
			case float64:
				switch {
				case w != math.Trunc(w):
					v.add(pathIndex(dp, 1), "weight %v is not a whole number", w)
					badWeight = true
				case w < 0:
					v.add(pathIndex(dp, 1), "weight %v is negative (flagd counts it as 0)", w)
					badWeight = true
				case w > math.MaxInt32:
					v.add(pathIndex(dp, 1), "weight %v exceeds %d", w, math.MaxInt32)
					badWeight = true
				default:
					total += int64(w)
				}
			case nil:
				total++
			case map[string]any:
				allLiteral = false
				v.logic(pathIndex(dp, 1), w, f, false)
			default:
				v.add(pathIndex(dp, 1), "weight must be a whole number, not %s", kindOf(w))
				badWeight = true
			}
		default:
			v.add(dp, "a fractional bucket is [variant, weight], not %s", kindOf(d))
		}
	}
	if badWeight {
		return
	}
	if total > math.MaxInt32 {
		v.add(path, "weights sum to %d, more than flagd's maximum %d", total, math.MaxInt32)
	}
	if allLiteral && total == 0 {
		v.add(path, "all weights are 0: fractional would never choose a variant")
	}
}

func (v *validator) semVer(path string, args any, f *flag) {
	list, ok := args.([]any)
	if !ok || len(list) != 3 {
		v.add(path, "sem_ver takes [version, operator, version]")
		return
	}
	if op, isStr := list[1].(string); isStr {
		if _, known := semVerOps[op]; !known {
			v.add(pathIndex(path, 1), "unknown sem_ver operator %q (=, !=, <, <=, >, >=, ^, ~)", op)
		}
	} else if isLiteral(list[1]) {
		v.add(pathIndex(path, 1), "the sem_ver operator must be a string, not %s", kindOf(list[1]))
	}
	for _, i := range []int{0, 2} {
		a := list[i]
		if isLiteral(a) && a != nil {
			if _, ok := parseSemver(a); !ok {
				v.add(pathIndex(path, i), "%v is not a semantic version", a)
			}
		}
		v.logic(pathIndex(path, i), a, f, false)
	}
}

func isLiteral(n any) bool {
	switch n.(type) {
	case map[string]any, []any:
		return false
	}
	return true
}

// variantKind is the JSON type of a variant value, "" when it cannot be one.
func variantKind(val any) string {
	switch val.(type) {
	case bool:
		return "boolean"
	case string:
		return "string"
	case float64:
		return "number"
	case map[string]any:
		return "object"
	}
	return ""
}

// variantName is the variant a targeting result names: a string as is,
// anything else by its JSON text (flagd strips the quotes of the JSON
// result, so true names "true").
func variantName(out any) (string, bool) {
	switch o := out.(type) {
	case string:
		return o, true
	case bool:
		return strconv.FormatBool(o), true
	case float64:
		b, err := json.Marshal(o)
		if err != nil {
			return "", false
		}
		return string(b), true
	case nil:
		return "", false
	}
	b, err := json.Marshal(out)
	if err != nil {
		return "", false
	}
	return strings.ReplaceAll(string(b), `"`, ""), true
}

func kindOf(n any) string {
	switch v := n.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case float64:
		return "a number"
	case string:
		return fmt.Sprintf("the string %q", v)
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", n)
}

var simpleKey = func(k string) bool {
	if k == "" {
		return false
	}
	for _, r := range k {
		if !(r == '-' || r == '_' || r == '$' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

func pathKey(base, k string) string {
	if simpleKey(k) {
		return base + "." + k
	}
	return base + "[" + strconv.Quote(k) + "]"
}

func pathIndex(base string, i int) string { return base + "[" + strconv.Itoa(i) + "]" }

// jsonErrorAt turns a decoding error into a message with line and column.
func jsonErrorAt(raw []byte, err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		line, col := lineCol(raw, se.Offset)
		return fmt.Sprintf("malformed JSON at line %d column %d (offset %d): %s", line, col, se.Offset, se.Error())
	case errors.As(err, &te):
		line, col := lineCol(raw, te.Offset)
		return fmt.Sprintf("malformed JSON at line %d column %d (offset %d): %s", line, col, te.Offset, te.Error())
	case errors.Is(err, io.EOF):
		return "empty file: expected a JSON object"
	default:
		line, col := lineCol(raw, int64(len(raw)))
		return fmt.Sprintf("malformed JSON at line %d column %d (offset %d): %s", line, col, len(raw), err.Error())
	}
}

func lineCol(raw []byte, off int64) (line, col int) {
	if off > int64(len(raw)) {
		off = int64(len(raw))
	}
	if off < 0 {
		off = 0
	}
	before := raw[:off]
	line = bytes.Count(before, []byte("\n")) + 1
	col = int(off) - (bytes.LastIndexByte(before, '\n') + 1) + 1
	return line, col
}
