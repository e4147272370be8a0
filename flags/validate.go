package flags

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
)

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

// standardOps are the operators of github.com/diegoholiveira/jsonlogic/v3.
var standardOps = map[string]bool{
	"==": true, "===": true, "!=": true, "!==": true, ">": true, ">=": true, "<": true, "<=": true,
	"!": true, "!!": true, "or": true, "and": true, "?:": true, "in": true, "in_sorted": true,
	"cat": true, "%": true, "abs": true, "max": true, "min": true, "+": true, "-": true, "*": true, "/": true,
	"substr": true, "merge": true, "if": true, "missing": true, "missing_some": true,
	"some": true, "filter": true, "map": true, "reduce": true, "all": true, "none": true, "set": true, "var": true,
}

// Validate reports every problem in a flag file, errors and warnings, in
// file order (nil when there are none).
func Validate(raw []byte) []Problem {
	_, problems := parse(raw)
	return problems
}

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
			if f.inputsKnown && slices.Contains(f.inputs, "targetingKey") {
				f.deferRule, f.deferMarks, f.deferSplits, f.deferrable = deferRule(resolved, nil, nil)
				f.deferInputs = slices.DeleteFunc(slices.Clone(f.inputs), func(n string) bool { return n == "targetingKey" })
			}
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
