package flags

import (
	"slices"
	"strings"
)

// Inputs lists, sorted, the top-level context attributes whose values
// (with the flag key) decide the flag's evaluation, and reports whether
// that list is proved complete. A caller may then remember an evaluation
// under those values: the same values give the same Result for as long as
// the Set is the same (see Version). ok is false, and nothing should be
// remembered, whenever the rule could read anything else:
//
//   - $flagd.timestamp, or $flagd in any way other than the exact path
//     "$flagd.flagKey" (a constant per flag);
//   - the whole context (var "" or []), a computed, numeric or empty-part
//     path, missing / missing_some (they take names), set (it builds
//     data), or an operator this package does not know.
//
// A var path contributes every one of its parts, not only the first: the
// JSONLogic engine, reaching a primitive in the middle of a path, looks the
// next part up in the enclosing object again ("email.x" reads "x" when
// email is a string). fractional without its own bucketing value hashes
// the targeting key, so it adds "targetingKey". A flag whose answer needs
// no context at all (see ContextFree) has no inputs and ok true.
func (s *Set) Inputs(flagKey string) (names []string, ok bool) {
	f, found := s.flags[flagKey]
	if !found || s.ContextFree(flagKey) {
		return nil, true
	}
	return f.inputs, f.inputsKnown
}

// ruleInputs is Inputs for one targeting rule.
func ruleInputs(rule any) (names []string, ok bool) {
	set := map[string]bool{}
	if !collectInputs(rule, set) {
		return nil, false
	}
	for n := range set {
		names = append(names, n)
	}
	slices.Sort(names)
	return names, true
}

// collectInputs adds to names what rule reads and reports false when it
// cannot be sure.
func collectInputs(rule any, names map[string]bool) bool {
	switch n := rule.(type) {
	case map[string]any:
		if len(n) > 1 {
			// The engine returns such an object as it is, unevaluated;
			// walking it anyway only adds names.
			for _, v := range n {
				if !collectInputs(v, names) {
					return false
				}
			}
			return true
		}
		for op, args := range n {
			switch {
			case op == "var":
				if !varInputs(args, names) {
					return false
				}
			case op == "missing", op == "missing_some", op == "set", !knownOp(op):
				return false
			case op == opFractional:
				names["targetingKey"] = true
				if !collectInputs(args, names) {
					return false
				}
			default:
				if !collectInputs(args, names) {
					return false
				}
			}
		}
	case []any:
		for _, a := range n {
			if !collectInputs(a, names) {
				return false
			}
		}
	}
	return true
}

// varInputs adds the parts of a var's path (and what its default reads).
func varInputs(args any, names map[string]bool) bool {
	path := args
	if list, isList := args.([]any); isList {
		if len(list) == 0 {
			return false
		}
		path = list[0]
		for _, d := range list[1:] {
			if !collectInputs(d, names) {
				return false
			}
		}
	}
	p, isStr := path.(string)
	if !isStr || p == "" {
		return false
	}
	if p == flagdKey+".flagKey" {
		return true
	}
	for part := range strings.SplitSeq(p, ".") {
		if part == "" || part == flagdKey {
			return false
		}
		names[part] = true
	}
	return true
}
