package flags

import (
	"crypto/rand"
	"fmt"
	"slices"
	"strconv"

	"github.com/open-feature/go-sdk/openfeature"
	"github.com/twmb/murmur3"
)

// Most revision flags read the targeting key only to split traffic by it:
// "staff get the canary, everyone else 90/10". Evaluated whole, every new
// key runs the rule again; evaluated with the key left out, the rule's
// answer is one Result or a split, the same for every key, and the key
// only picks a bucket: a hash. A caller can then remember the answer under
// the other attributes alone (the router's flag cache), so a stream of new
// users costs a lookup and a hash instead of a JSONLogic run each.

// Deferred is a flag's evaluation with the targeting key left out: a
// single Result, or one Result per bucket of a fractional split (then one
// more, for an empty key), which Index picks for a key.
type Deferred struct {
	Results []Result
	flagKey string
	ends    []uint64 // running weight totals; nil: Results holds one Result
}

// Index is which of d.Results is the evaluation for targeting key tk: the
// bucket fractional hashes tk into ($flagd.flagKey followed by the key,
// as flagd), or the last Result for an empty key, for which fractional
// answers null.
func (d *Deferred) Index(tk string) int {
	if d.ends == nil {
		return 0
	}
	if tk == "" {
		return len(d.Results) - 1
	}
	var buf [128]byte // the hashed text, without an allocation for keys of usual length
	return pickBucket(murmur3.Sum32(append(append(buf[:0], d.flagKey...), tk...)), d.ends)
}

// DeferredInputs is Inputs for EvaluateDeferred: the attributes besides the
// targeting key that decide the flag, for a flag that reads the targeting
// key only as fractional's own bucketing value in a branch of its rule
// (never in a condition, never through var, with literal buckets). ok is
// false for every other flag, which must be evaluated whole.
func (s *Set) DeferredInputs(flagKey string) (names []string, ok bool) {
	f, found := s.flags[flagKey]
	if !found || s.ContextFree(flagKey) || !f.deferrable {
		return nil, false
	}
	return f.deferInputs, true
}

// EvaluateDeferred evaluates a flag DeferredInputs accepts for ctx, which
// must not carry the targeting key and becomes the rule's data (the
// caller built it for this one call). ok is false for any other flag.
// For every key, Results[Index(key)] is what Evaluate answers for ctx
// with that targeting key.
func (s *Set) EvaluateDeferred(flagKey string, ctx map[string]any) (d *Deferred, ok bool) {
	f, found := s.flags[flagKey]
	if !found || s.ContextFree(flagKey) || !f.deferrable {
		return nil, false
	}
	delete(ctx, "targetingKey")
	data := contextData(f, ctx, true)
	// The rule with each split replaced by its marker runs on the same
	// engine: the conditions never read the key, so it takes the branch
	// the whole rule takes, and answers a marker where that is a split.
	out, err := applyRule(f.deferRule, data)
	if err != nil {
		return &Deferred{Results: []Result{{Reason: ReasonError, ErrorCode: ErrParse,
			ErrorMessage: fmt.Sprintf("flag %q: targeting failed: %v", flagKey, err), Metadata: f.metadata}}}, true
	}
	i := slices.Index(f.deferMarks, out)
	if i < 0 {
		return &Deferred{Results: []Result{f.outcome(out)}}, true
	}
	names, ends, valid := buckets(f.deferSplits[i], data)
	if !valid {
		return &Deferred{Results: []Result{f.outcome(nil)}}, true
	}
	d = &Deferred{flagKey: f.key, ends: ends, Results: make([]Result, 0, len(names)+1)}
	for _, name := range names {
		d.Results = append(d.Results, f.outcome(name))
	}
	d.Results = append(d.Results, f.outcome(nil))
	return d, true
}

// splitMarkerPrefix begins the markers that stand for a rule's splits
// while it runs without the key: a NUL and a nonce drawn at start, so
// no flag file or request can spell one.
var splitMarkerPrefix = "\x00split:" + rand.Text() + ":"

// deferRule is rule with each split on the targeting key replaced by a
// marker (marks[i] stands for splits[i], fractional's buckets), or ok
// false when rule reads the key anywhere else: a condition, a var, a
// split with computed buckets, any operator but the branches of if and ?:.
func deferRule(rule any, marks []any, splits [][]any) (out any, _ []any, _ [][]any, ok bool) {
	if !readsKey(rule) {
		return rule, marks, splits, true
	}
	m, isMap := rule.(map[string]any)
	if !isMap || len(m) != 1 {
		return nil, nil, nil, false
	}
	for op, args := range m {
		list, isList := args.([]any)
		switch {
		case !isList:
			return nil, nil, nil, false
		case op == opFractional:
			dists, lit := literalSplit(list)
			if !lit {
				return nil, nil, nil, false
			}
			mark := splitMarkerPrefix + strconv.Itoa(len(marks))
			return mark, append(marks, mark), append(splits, dists), true
		case op == "if" || op == "?:":
			branches := slices.Clone(list)
			for i := range branches {
				if i%2 == 0 && i+1 < len(branches) { // a condition
					if readsKey(branches[i]) {
						return nil, nil, nil, false
					}
					continue
				}
				if branches[i], marks, splits, ok = deferRule(branches[i], marks, splits); !ok {
					return nil, nil, nil, false
				}
			}
			return map[string]any{op: branches}, marks, splits, true
		}
	}
	return nil, nil, nil, false
}

// literalSplit returns fractional's buckets when its arguments bucket by
// the targeting key (no bucketing value, or null) and every bucket is
// literal.
func literalSplit(args []any) ([]any, bool) {
	if len(args) == 0 {
		return nil, false
	}
	switch args[0].(type) {
	case nil:
		args = args[1:]
	case []any:
	default:
		return nil, false
	}
	for _, b := range args {
		bucket, ok := b.([]any)
		if !ok {
			return nil, false
		}
		for _, v := range bucket {
			switch v.(type) {
			case string, bool, float64, nil:
			default:
				return nil, false
			}
		}
	}
	return args, true
}

// readsKey reports whether a rule can read the targeting key (or whether
// that cannot be known).
func readsKey(rule any) bool {
	names, ok := ruleInputs(rule)
	return !ok || slices.Contains(names, "targetingKey")
}

// ResolveString is Results[i] as the provider answers a string evaluation
// with default def (see Set.ResolveString).
func (d *Deferred) ResolveString(i int, def string) openfeature.StringResolutionDetail {
	return resolve(d.Results[i], def, "string", asString)
}
