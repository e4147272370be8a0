package flags

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"

	"github.com/pilotlight/pilotlight/functions"
)

// Split is a traffic split: percent of a Service's untargeted traffic per
// revision name. A valid Split sums to 100.
type Split map[string]int64

// Check reports a split whose percents are out of range or do not sum to 100.
func (s Split) Check() error {
	var sum int64
	for _, name := range slices.Sorted(maps.Keys(s)) {
		if s[name] < 0 || s[name] > 100 {
			return fmt.Errorf("revision %s: %d%% out of range [0, 100]", name, s[name])
		}
		sum += s[name]
	}
	if sum != 100 {
		return fmt.Errorf("percents sum to %d, not 100 (%v)", sum, map[string]int64(s))
	}
	return nil
}

// Restrict keeps the revisions in available and rescales them to 100. When
// none of them had a share, all traffic goes to fallback. Deployer uses it
// while it creates revisions one by one.
func (s Split) Restrict(available []string, fallback string) Split {
	weights := map[string]float64{}
	var order []string
	for _, name := range available {
		if s[name] > 0 {
			weights[name] = float64(s[name])
			order = append(order, name)
		}
	}
	if len(order) == 0 {
		return Split{fallback: 100}
	}
	return normalise(order, weights)
}

// flagd's JSON format, read generically: only what the split needs, so this
// package does not depend on the router's flag provider.
type splitFile struct {
	Flags      map[string]splitFlag       `json:"flags"`
	Evaluators map[string]json.RawMessage `json:"$evaluators"`
}

type splitFlag struct {
	State          string          `json:"state"`
	Variants       map[string]any  `json:"variants"`
	DefaultVariant string          `json:"defaultVariant"`
	Targeting      json.RawMessage `json:"targeting"`
}

// SplitFromFlags derives a function's Knative traffic split from its flag in a
// flagd flag file (flagsFile names the file in errors). The split is what the
// flag gives a request that matches no targeting rule: the catch-all branch of
// the targeting's if/else chain. A "fractional" there becomes its weights in
// percent; a variant or no targeting at all sends 100% to that variant's
// revision (the defaultVariant when nothing else says). Targeted users (an
// ends_with rule, say) reach their revision through the router, which
// evaluates the flag itself and uses the revision's tag URL. A function
// without a flag in the file gets 100% on its newest revision.
func SplitFromFlags(m *functions.Manifest, flagsFile string, raw []byte) (Split, error) {
	var f splitFile
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, fmt.Errorf("%s: decode flagd JSON: %w", flagsFile, err)
	}
	def, ok := f.Flags[m.Flag]
	if !ok {
		return Split{m.Revisions[len(m.Revisions)-1].Name: 100}, nil
	}
	where := fmt.Sprintf("%s: flag %q", flagsFile, m.Flag)
	revisionOf := func(variant string) (string, error) {
		v, ok := def.Variants[variant]
		if !ok {
			return "", fmt.Errorf("%s: variant %q is not defined (variants: %v)", where, variant, slices.Sorted(maps.Keys(def.Variants)))
		}
		name, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("%s: variant %q is %v, not a revision name", where, variant, v)
		}
		if _, ok := m.Revision(name); !ok {
			return "", fmt.Errorf("%s: variant %q names revision %q, which function %s does not have (%v)", where, variant, name, m.Name, functions.RevisionNames(m.Revisions))
		}
		return name, nil
	}
	// Check every variant up front, so a typo fails even when unused.
	for _, v := range slices.Sorted(maps.Keys(def.Variants)) {
		if _, err := revisionOf(v); err != nil {
			return nil, err
		}
	}
	// The defaultVariant may be null in flagd (the caller's default then);
	// it is only needed when nothing else decides.
	byDefault := func() (Split, error) {
		if def.DefaultVariant == "" {
			return nil, fmt.Errorf("%s: no defaultVariant, and no targeting rule that answers every request", where)
		}
		rev, err := revisionOf(def.DefaultVariant)
		if err != nil {
			return nil, err
		}
		return Split{rev: 100}, nil
	}
	var targeting any
	if len(def.Targeting) > 0 {
		if err := json.Unmarshal(def.Targeting, &targeting); err != nil {
			return nil, fmt.Errorf("%s: targeting: %w", where, err)
		}
	}
	if def.State == "DISABLED" || targeting == nil {
		return byDefault()
	}
	node, err := splitCatchAll(targeting, f.Evaluators, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: targeting: %w", where, err)
	}
	switch n := node.(type) {
	case string:
		rev, err := revisionOf(n)
		if err != nil {
			return nil, err
		}
		return Split{rev: 100}, nil
	case splitBuckets:
		weights := map[string]float64{}
		var order []string
		for _, b := range n {
			rev, err := revisionOf(b.variant)
			if err != nil {
				return nil, err
			}
			if _, seen := weights[rev]; !seen {
				order = append(order, rev)
			}
			weights[rev] += b.weight
		}
		return normalise(order, weights), nil
	default:
		return byDefault()
	}
}

type splitBucket struct {
	variant string
	weight  float64
}

type splitBuckets []splitBucket

const maxSplitRefDepth = 16

// splitCatchAll follows a JSONLogic expression down the path a request takes
// when no condition holds: the else branch of each if. It returns a variant
// name (string), a splitBuckets, or nil (the flag's defaultVariant).
func splitCatchAll(node any, evaluators map[string]json.RawMessage, depth int) (any, error) {
	if depth > maxSplitRefDepth {
		return nil, fmt.Errorf("$ref nesting deeper than %d", maxSplitRefDepth)
	}
	switch n := node.(type) {
	case string:
		return n, nil
	case map[string]any:
		if ref, ok := n["$ref"]; ok {
			name, _ := ref.(string)
			raw, ok := evaluators[name]
			if !ok {
				return nil, fmt.Errorf("$ref %q: no such evaluator in $evaluators", name)
			}
			var inner any
			if err := json.Unmarshal(raw, &inner); err != nil {
				return nil, fmt.Errorf("$evaluators.%s: %w", name, err)
			}
			return splitCatchAll(inner, evaluators, depth+1)
		}
		if args, ok := n["if"].([]any); ok {
			if len(args)%2 == 1 {
				return splitCatchAll(args[len(args)-1], evaluators, depth)
			}
			return nil, nil
		}
		if args, ok := n["fractional"].([]any); ok {
			return parseSplitBuckets(args)
		}
	}
	return nil, nil
}

// parseSplitBuckets reads flagd's splitBuckets: an optional bucketing expression
// first, then [variant, weight] pairs (weight 1 when omitted).
func parseSplitBuckets(args []any) (splitBuckets, error) {
	var out splitBuckets
	for i, a := range args {
		pair, ok := a.([]any)
		if !ok {
			if i == 0 {
				continue // the bucketing-key expression
			}
			return nil, fmt.Errorf("splitBuckets[%d]: want [variant, weight], got %v", i, a)
		}
		if len(pair) < 1 || len(pair) > 2 {
			return nil, fmt.Errorf("splitBuckets[%d]: want [variant, weight], got %v", i, pair)
		}
		name, ok := pair[0].(string)
		if !ok {
			return nil, fmt.Errorf("splitBuckets[%d]: variant %v is not a string", i, pair[0])
		}
		w := 1.0
		if len(pair) == 2 {
			if w, ok = pair[1].(float64); !ok || w < 0 || math.IsInf(w, 0) {
				return nil, fmt.Errorf("splitBuckets[%d]: weight %v is not a non-negative number", i, pair[1])
			}
		}
		out = append(out, splitBucket{variant: name, weight: w})
	}
	var total float64
	for _, b := range out {
		total += b.weight
	}
	if len(out) == 0 || total == 0 {
		return nil, fmt.Errorf("fractional has no bucket with a positive weight")
	}
	return out, nil
}

// normalise turns weights into whole percents summing to 100 by the largest
// remainder method (ties go to the earlier revision), so 1:2 is 33/67 and
// 90:10 stays 90/10.
func normalise(order []string, weights map[string]float64) Split {
	var total float64
	for _, name := range order {
		total += weights[name]
	}
	out := Split{}
	type rem struct {
		name string
		frac float64
		idx  int
	}
	var rems []rem
	var sum int64
	for i, name := range order {
		exact := weights[name] * 100 / total
		whole := int64(math.Floor(exact))
		out[name] = whole
		sum += whole
		rems = append(rems, rem{name, exact - float64(whole), i})
	}
	sort.SliceStable(rems, func(i, j int) bool { return rems[i].frac > rems[j].frac })
	for i := 0; sum < 100; i++ {
		out[rems[i%len(rems)].name]++
		sum++
	}
	return out
}
