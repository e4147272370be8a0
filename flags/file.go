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

// Validate reports every problem in a flag file, errors and warnings, in
// file order (nil when there are none).
func Validate(raw []byte) []Problem {
	_, problems := parse(raw)
	return problems
}

type validator struct {
	problems   []Problem
	evaluators map[string]any
	nodes      int // JSONLogic nodes after $ref substitution
	// unresolved is set by resolveRefs when a $ref stays in the rule.
	unresolved string
}

// maxRuleNodes bounds $ref substitution: evaluators that use each other
// twice at every level would otherwise grow exponentially.
const maxRuleNodes = 1 << 18

// add records a problem flagd refuses the file for.
func (v *validator) add(path, format string, args ...any) {
	v.problems = append(v.problems, Problem{Path: path, Msg: fmt.Sprintf(format, args...), Severity: SeverityError})
}

// warn records an oddity flagd loads anyway.
func (v *validator) warn(path, format string, args ...any) {
	v.problems = append(v.problems, Problem{Path: path, Msg: fmt.Sprintf(format, args...), Severity: SeverityWarning})
}

func (v *validator) errorsSince(before int) bool {
	return len(Errors(v.problems[before:])) > 0
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

// metadata reads a metadata object: flagd refuses one that is not an object
// and loads values of any type.
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
			v.warn(pathKey(path, k), "metadata values should be strings, numbers or booleans, not %s", kindOf(m[k]))
		}
	}
	return m
}

func (v *validator) flag(path, key string, node any, setMeta map[string]any, inArray bool) *flag {
	m, ok := node.(map[string]any)
	if !ok {
		v.add(path, "a flag must be an object, not %s", kindOf(node))
		return nil
	}
	before := len(v.problems)
	for _, k := range slices.Sorted(maps.Keys(m)) {
		switch k {
		case "state", "variants", "defaultVariant", "targeting", "metadata":
		case "key":
			if !inArray {
				v.warn(pathKey(path, k), "ignored: a flag's key is its name in the flags object")
			}
		default:
			v.warn(pathKey(path, k), "unknown flag property, ignored (flagd knows state, variants, defaultVariant, targeting, metadata)")
		}
	}
	f := &flag{key: key}
	switch st := m["state"].(type) {
	case string:
		if st != StateEnabled && st != StateDisabled {
			v.warn(path+".state", "state %q is neither ENABLED nor DISABLED; flagd serves the flag as ENABLED", st)
		}
		f.state = st
	case nil:
		v.warn(path+".state", "missing state; flagd serves the flag as ENABLED")
	default:
		v.add(path+".state", "state must be the string ENABLED or DISABLED, not %s", kindOf(st))
	}

	f.variants = map[string]any{}
	switch vs := m["variants"].(type) {
	case map[string]any:
		if len(vs) == 0 {
			v.warn(path+".variants", "no variants: every evaluation gives the caller's default")
		}
		kinds := map[string][]string{}
		for _, name := range slices.Sorted(maps.Keys(vs)) {
			val := vs[name]
			vp := pathKey(path+".variants", name)
			k := variantKind(val)
			switch k {
			case "":
				v.warn(vp, "a variant value should be a boolean, string, number or object, not %s; no typed evaluation can return it", kindOf(val))
			case "number":
				if n := val.(float64); math.Abs(n) > maxSafeInt && n == math.Trunc(n) {
					v.warn(vp, "%v is outside the JSON-safe integer range ±(2^53-1); an integer evaluation is a TYPE_MISMATCH", n)
				}
			}
			if k != "" {
				kinds[k] = append(kinds[k], name)
			}
			f.variants[name] = val
		}
		if len(kinds) > 1 {
			var parts []string
			for _, k := range slices.Sorted(maps.Keys(kinds)) {
				parts = append(parts, fmt.Sprintf("%s (%s)", k, strings.Join(kinds[k], ", ")))
			}
			v.warn(path+".variants", "variants mix types: %s; an evaluation of one type is a TYPE_MISMATCH for the others", strings.Join(parts, ", "))
		}
	case nil:
		v.warn(path+".variants", "missing variants: every evaluation gives the caller's default")
	default:
		v.add(path+".variants", "variants must be an object of name: value, not %s", kindOf(vs))
	}

	switch dv := m["defaultVariant"].(type) {
	case nil: // null or absent: code default
	case string:
		if dv == "" { // flagd: the empty string is no default
			break
		}
		if _, ok := f.variants[dv]; !ok {
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

	if t, ok := m["targeting"]; ok {
		tp := path + ".targeting"
		tm, isObj := t.(map[string]any)
		switch {
		case isObj && len(tm) == 0: // {}: no targeting, as flagd
		default:
			if !isObj {
				v.warn(tp, "targeting should be a JSONLogic object, not %s; flagd evaluates it as a rule all the same", kindOf(t))
			}
			v.unresolved = ""
			resolved := v.resolveRefs(tp, t, nil)
			v.logic(tp, resolved, f, true)
			f.targeting, f.targeted, f.parseErr = resolved, true, v.unresolved
			f.reads = map[string]bool{}
			f.readsAll = attributesRead(resolved, f.reads)
			f.inputs, f.inputsKnown = ruleInputs(resolved)
		}
	}
	if v.errorsSince(before) {
		return nil
	}
	f.raw = Flag{State: f.state, Variants: f.variants, Metadata: flagMeta}
	if f.hasDefault {
		d := f.defVariant
		f.raw.DefaultVariant = &d
	}
	if f.targeted {
		f.raw.Targeting, _ = json.Marshal(f.targeting)
	}
	return f
}

// resolveRefs substitutes {"$ref": "name"} with the evaluator's rule, as
// flagd does: only an object that is exactly {"$ref": "<name>"} is
// replaced. A $ref that cannot be replaced stays in the rule; flagd's
// JSONLogic engine then fails on it, so the flag answers PARSE_ERROR (and
// the rest of the file serves): v.unresolved records why.
func (v *validator) resolveRefs(path string, node any, stack []string) any {
	v.nodes++
	if v.nodes == maxRuleNodes {
		v.add(path, "more than %d JSONLogic nodes after substituting $ref evaluators (a Pilotlight limit: evaluators that use each other twice at every level grow exponentially)", maxRuleNodes)
	}
	if v.nodes >= maxRuleNodes {
		return nil
	}
	switch n := node.(type) {
	case map[string]any:
		if ref, ok := n["$ref"]; ok {
			name, isStr := ref.(string)
			ev, found := v.evaluators[name]
			why := ""
			switch {
			case !isStr:
				why = fmt.Sprintf("$ref must name an evaluator, not %s", kindOf(ref))
			case len(n) > 1:
				why = fmt.Sprintf("$ref %q shares its object with other keys (%s), so flagd does not substitute it", name, strings.Join(slices.Sorted(maps.Keys(n)), ", "))
			case !found:
				why = fmt.Sprintf("$ref %q names no evaluator in $evaluators (have: %s)", name, strings.Join(slices.Sorted(maps.Keys(v.evaluators)), ", "))
			case slices.Contains(stack, name):
				why = fmt.Sprintf("$ref %q refers to itself through %s", name, strings.Join(append(stack, name), " -> "))
			}
			if why == "" {
				return v.resolveRefs(path+".$ref", ev, append(slices.Clone(stack), name))
			}
			v.warn(path+".$ref", "%s: every evaluation of a flag using it is a PARSE_ERROR", why)
			if v.unresolved == "" {
				v.unresolved = path + ".$ref: " + why
			}
		}
		out := make(map[string]any, len(n))
		for k, val := range n {
			if k == "$ref" {
				out[k] = val
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
// variant names). Everything it finds is a warning: flagd loads such rules
// and evaluates them (null, so the default variant, or an error).
func (v *validator) logic(path string, node any, f *flag, outcome bool) {
	switch n := node.(type) {
	case map[string]any:
		if len(n) == 0 {
			return
		}
		if _, isRef := n["$ref"]; isRef {
			return // reported by resolveRefs
		}
		if len(n) > 1 {
			v.warn(path, "object with %d keys (%s): a JSONLogic operation has exactly one operator key; the engine returns the object itself", len(n), strings.Join(slices.Sorted(maps.Keys(n)), ", "))
			return
		}
		for op, args := range n {
			p := pathKey(path, op)
			if !knownOp(op) {
				v.warn(p, "unknown JSONLogic operator %q: evaluating it is a PARSE_ERROR", op)
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
					v.warn(p, "?: takes [condition, then, else]")
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
					v.warn(p, "%s takes [value, %s]; flagd evaluates it to null, so the default variant", op, map[string]string{opStartsWith: "prefix", opEndsWith: "suffix"}[op])
					v.args(p, args, f)
					return
				}
				for i, a := range list {
					if isLiteral(a) {
						if _, isStr := a.(string); !isStr {
							v.warn(pathIndex(p, i), "%s compares strings, not %s; flagd evaluates it to null, so the default variant", op, kindOf(a))
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
		v.warn(path, "targeting returns variant %q, which flag %q does not define (variants: %s); such an evaluation is an ERROR (GENERAL)", name, f.key, strings.Join(slices.Sorted(maps.Keys(f.variants)), ", "))
	}
}

// fractional checks a fractional's arguments. flagd's schema wants whole,
// non-negative weights; flagd's evaluator clamps a negative one to 0 and
// answers null (the default variant) for the rest.
func (v *validator) fractional(path string, args any, f *flag, outcome bool) {
	const null = "; flagd evaluates the fractional to null, so the default variant"
	list, ok := args.([]any)
	if !ok {
		v.warn(path, "fractional takes [bucketing value?, [variant, weight]...], not %s%s", kindOf(args), null)
		v.args(path, args, f)
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
			v.warn(pathIndex(path, 0), "the bucketing value must be a string or an expression giving one, not %s (flagd hashes strings only)%s", kindOf(first), null)
			dists = list[1:]
		}
	}
	if len(dists) == 0 {
		v.warn(path, "fractional needs at least one [variant, weight] pair%s", null)
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
				v.warn(dp, "a fractional bucket is [variant, weight], not %d elements%s", len(dd), null)
				badWeight = true
				continue
			}
			switch name := dd[0].(type) {
			case map[string]any:
				v.logic(pathIndex(dp, 0), name, f, outcome)
			case []any:
				v.warn(pathIndex(dp, 0), "a bucket's variant must be a string, boolean, number, null or an expression, not an array%s", null)
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
					v.warn(pathIndex(dp, 1), "weight %v is not a whole number%s", w, null)
					badWeight = true
				case w > math.MaxInt32:
					v.warn(pathIndex(dp, 1), "weight %v exceeds %d%s", w, math.MaxInt32, null)
					badWeight = true
				case w < 0:
					v.warn(pathIndex(dp, 1), "weight %v is negative: flagd counts it as 0", w)
				default:
					total += int64(w)
				}
			case nil:
				total++
			case map[string]any:
				allLiteral = false
				v.logic(pathIndex(dp, 1), w, f, false)
			default:
				v.warn(pathIndex(dp, 1), "weight must be a whole number, not %s%s", kindOf(w), null)
				badWeight = true
			}
		default:
			v.warn(dp, "a fractional bucket is [variant, weight], not %s%s", kindOf(d), null)
			badWeight = true
		}
	}
	if badWeight {
		return
	}
	if total > math.MaxInt32 {
		v.warn(path, "weights sum to %d, more than flagd's maximum %d%s", total, math.MaxInt32, null)
	}
	if allLiteral && total == 0 {
		v.warn(path, "all weights are 0%s", null)
	}
}

func (v *validator) semVer(path string, args any, f *flag) {
	const null = "; flagd evaluates it to null, so the default variant"
	list, ok := args.([]any)
	if !ok || len(list) != 3 {
		v.warn(path, "sem_ver takes [version, operator, version]%s", null)
		v.args(path, args, f)
		return
	}
	if op, isStr := list[1].(string); isStr {
		if _, known := semVerOps[op]; !known {
			v.warn(pathIndex(path, 1), "unknown sem_ver operator %q (=, !=, <, <=, >, >=, ^, ~)%s", op, null)
		}
	} else if isLiteral(list[1]) {
		v.warn(pathIndex(path, 1), "the sem_ver operator must be a string, not %s%s", kindOf(list[1]), null)
	}
	for _, i := range []int{0, 2} {
		a := list[i]
		if isLiteral(a) {
			if _, ok := parseSemver(a); !ok {
				v.warn(pathIndex(path, i), "%v is not a semantic version%s", a, null)
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
