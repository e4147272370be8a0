package flags

import (
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

// SplitFromFlags parses a flag file (flagsFile names it in errors) and
// derives the function's Knative traffic split from it (see Set.Split).
func SplitFromFlags(m *functions.Manifest, flagsFile string, raw []byte) (Split, error) {
	s, err := Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flagsFile, err)
	}
	return s.Split(m), nil
}

// Split is the traffic a request that matches no targeting rule gets from
// m's flag (m.Flag): the catch-all branch of the targeting's if/else chain.
// A "fractional" there becomes its weights in percent; anything else is
// one outcome, 100%. Each outcome (a bucket's variant, a literal, null for
// the default variant) is read as Evaluate reads targeting's result and
// mapped to a revision by ServingRevision, so the split and the local
// router agree in every state: a missing or DISABLED flag, a code default
// and an evaluation error all give m.DefaultRevision(). Targeted users (an
// ends_with rule, say) reach their revision through the router, which
// evaluates the flag itself and uses the revision's tag URL.
func (s *Set) Split(m *functions.Manifest) Split {
	f := s.flags[m.Flag]
	revisionOf := func(r Result) string {
		value, _ := r.Value.(string)
		if r.ErrorCode != "" {
			value = ""
		}
		rev, _, _ := s.ServingRevision(m, value)
		return rev
	}
	switch {
	case f == nil || f.state == StateDisabled || f.parseErr != "":
		return Split{m.DefaultRevision(): 100}
	case !f.targeted:
		return Split{revisionOf(s.Evaluate(m.Flag, nil)): 100}
	}
	node := catchAll(f.targeting)
	buckets, ok := fractionalBuckets(node)
	if !ok {
		if !isLiteral(node) {
			node = nil // an expression we cannot fold: as if it gave null
		}
		return Split{revisionOf(f.outcome(node)): 100}
	}
	weights := map[string]float64{}
	var order []string
	for _, b := range buckets {
		rev := revisionOf(f.outcome(b.variant))
		if _, seen := weights[rev]; !seen {
			order = append(order, rev)
		}
		weights[rev] += b.weight
	}
	return normalise(order, weights)
}

type splitBucket struct {
	variant any
	weight  float64
}

// catchAll follows a (substituted) JSONLogic rule down the path a request
// takes when no condition holds: the else branch of each if.
func catchAll(node any) any {
	for {
		m, ok := node.(map[string]any)
		if !ok || len(m) != 1 {
			return node
		}
		args, ok := m["if"].([]any)
		if !ok {
			return node
		}
		if len(args)%2 == 0 {
			return nil // if without else: null
		}
		node = args[len(args)-1]
	}
}

// fractionalBuckets reads a fractional's literal buckets as flagd's
// fractional does: a missing or null weight counts 1, a negative one 0. It
// reports false when node is no fractional, or one flagd would evaluate to
// null (all weights 0, a bucket or weight it refuses, an expression).
func fractionalBuckets(node any) ([]splitBucket, bool) {
	m, ok := node.(map[string]any)
	if !ok || len(m) != 1 {
		return nil, false
	}
	args, ok := m[opFractional].([]any)
	if !ok || len(args) == 0 {
		return nil, false
	}
	if _, isBucket := args[0].([]any); !isBucket {
		args = args[1:] // the bucketing value
	}
	var out []splitBucket
	var total float64
	for _, a := range args {
		pair, ok := a.([]any)
		if !ok || len(pair) == 0 || len(pair) > 2 {
			return nil, false
		}
		switch pair[0].(type) {
		case string, bool, float64, nil:
		default:
			return nil, false
		}
		w := 1.0
		if len(pair) == 2 && pair[1] != nil {
			n, ok := pair[1].(float64)
			if !ok || n != math.Trunc(n) || n > math.MaxInt32 {
				return nil, false
			}
			w = math.Max(n, 0)
		}
		out = append(out, splitBucket{variant: pair[0], weight: w})
		total += w
	}
	if total == 0 || total > math.MaxInt32 {
		return nil, false
	}
	return out, true
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
