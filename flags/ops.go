package flags

import (
	"fmt"
	"math"
	"strings"

	"github.com/diegoholiveira/jsonlogic/v3"
	"github.com/twmb/murmur3"
)

// flagd's custom JSONLogic operators.
const (
	opFractional = "fractional"
	opSemVer     = "sem_ver"
	opStartsWith = "starts_with"
	opEndsWith   = "ends_with"
)

// Registration only: jsonlogic keeps custom operators in a package-level
// table, so these names mean flagd's operators for the whole binary.
func init() {
	jsonlogic.AddOperator(opFractional, fractional)
	jsonlogic.AddOperator(opSemVer, semVer)
	jsonlogic.AddOperator(opStartsWith, func(values, _ any) any { return affix(values, strings.HasPrefix) })
	jsonlogic.AddOperator(opEndsWith, func(values, _ any) any { return affix(values, strings.HasSuffix) })
}

// fractional is flagd's "fractional" (the v2 "high-precision" generation):
//
//	{"fractional": [bucketBy?, [variant, weight], [variant, weight], ...]}
//
// bucketBy, when it is a string (usually an expression such as
// {"cat": [{"var": "$flagd.flagKey"}, {"var": "email"}]}), is hashed as is.
// When it is absent (the first argument is already a bucket) or null, the
// hashed string is $flagd.flagKey followed by targetingKey. The hash is
// MurmurHash3 x86 32-bit with seed 0, read as unsigned; it is projected onto
// [0, total weight) as (hash * total) >> 32 and the buckets are walked in
// order. A missing or null weight counts 1, a negative one 0; weights must be
// whole and sum to at most 2^31-1. Variant names and weights may be
// expressions, evaluated against the same data. Like flagd, a non-string
// bucketing value (a number, a boolean, an object) is an error: flagd's v2
// hashes strings only. Every error returns null, so the flag's default
// variant wins.
func fractional(values, data any) any {
	args, ok := values.([]any)
	if !ok || len(args) == 0 {
		return nil
	}
	dataMap, _ := data.(map[string]any)
	var bucketBy string
	dists := args
	switch first := args[0].(type) {
	case string:
		bucketBy, dists = first, args[1:]
	case nil, []any:
		if first == nil {
			dists = args[1:]
		}
		tk, ok := dataMap["targetingKey"].(string)
		if !ok || tk == "" {
			return nil // no bucketing value and no (or an empty) targeting key
		}
		fk := ""
		if props, ok := dataMap[flagdKey].(map[string]any); ok {
			fk, _ = props["flagKey"].(string)
		}
		bucketBy = fk + tk
	default:
		return nil
	}
	names, ends, ok := buckets(dists, data)
	if !ok {
		return nil
	}
	return names[pickBucket(murmur3.StringSum32(bucketBy), ends)]
}

// buckets reads fractional's distribution: each bucket's variant and the
// running total of the weights up to and including it. ok is false where
// fractional answers null: no bucket, a malformed one, a weight that is
// not whole or too large, or weights summing to 0 or past 2^31-1.
func buckets(dists []any, data any) (names []any, ends []uint64, ok bool) {
	if len(dists) == 0 {
		return nil, nil, false
	}
	ends = make([]uint64, len(dists))
	names = make([]any, len(dists))
	var total uint64
	for i, d := range dists {
		bucket, ok := d.([]any)
		if !ok || len(bucket) == 0 {
			return nil, nil, false
		}
		// flagd checks every bucket's variant before choosing one.
		name := bucket[0]
		if m, isMap := name.(map[string]any); isMap {
			name = applyNested(m, data)
		}
		switch name.(type) {
		case string, bool, float64, nil:
			names[i] = name
		default:
			return nil, nil, false
		}
		w := uint64(1)
		if len(bucket) >= 2 {
			wv := bucket[1]
			if m, isMap := wv.(map[string]any); isMap {
				wv = applyNested(m, data)
			}
			switch n := wv.(type) {
			case nil:
			case float64:
				if n != math.Trunc(n) || n > math.MaxInt32 {
					return nil, nil, false
				}
				w = 0
				if n > 0 {
					w = uint64(n)
				}
			default:
				return nil, nil, false
			}
		}
		total += w
		ends[i] = total
	}
	if total == 0 || total > math.MaxInt32 {
		return nil, nil, false
	}
	return names, ends, true
}

// pickBucket projects a hash onto [0, total weight) as (hash * total) >> 32
// and walks the buckets in order.
func pickBucket(hash uint32, ends []uint64) int {
	point := (uint64(hash) * ends[len(ends)-1]) >> 32
	i := 0
	for point >= ends[i] {
		i++
	}
	return i
}

// applyNested evaluates an expression nested inside an operator's literal
// arguments (jsonlogic only evaluates an operator's top-level arguments).
func applyNested(rule map[string]any, data any) any {
	//lint:ignore SA1019 as in applyRule: Apply would re-encode the nested rule
	out, err := jsonlogic.ApplyInterface(rule, data)
	if err != nil {
		return nil
	}
	return out
}

// affix is starts_with / ends_with: [value, affix], both strings; anything
// else is null (flagd testbed: operator errors return null, not false).
func affix(values any, has func(s, affix string) bool) any {
	args, ok := values.([]any)
	if !ok || len(args) != 2 {
		return nil
	}
	s, ok1 := args[0].(string)
	a, ok2 := args[1].(string)
	if !ok1 || !ok2 {
		return nil
	}
	return has(s, a)
}

var semVerOps = map[string]func(a, b semver) bool{
	"=":  func(a, b semver) bool { return a.compare(b) == 0 },
	"!=": func(a, b semver) bool { return a.compare(b) != 0 },
	"<":  func(a, b semver) bool { return a.compare(b) < 0 },
	"<=": func(a, b semver) bool { return a.compare(b) <= 0 },
	">":  func(a, b semver) bool { return a.compare(b) > 0 },
	">=": func(a, b semver) bool { return a.compare(b) >= 0 },
	// flagd: ^ means the same major version, ~ the same major.minor
	// (golang.org/x/mod/semver Major / MajorMinor), pre-releases included.
	"^": func(a, b semver) bool { return cmpNum(a.major, b.major) == 0 },
	"~": func(a, b semver) bool { return cmpNum(a.major, b.major) == 0 && cmpNum(a.minor, b.minor) == 0 },
}

// semVer is flagd's "sem_ver": [version, operator, version]. Versions may
// carry a v or V prefix, may be partial ("1", "1.2" mean 1.0.0, 1.2.0) and
// may be numbers in the context (1.2 is "1.2"); build metadata is ignored.
// Anything unparsable is null.
func semVer(values, _ any) any {
	args, ok := values.([]any)
	if !ok || len(args) != 3 {
		return nil
	}
	op, ok := args[1].(string)
	if !ok {
		return nil
	}
	cmp, ok := semVerOps[op]
	if !ok {
		return nil
	}
	a, ok1 := parseSemver(args[0])
	b, ok2 := parseSemver(args[2])
	if !ok1 || !ok2 {
		return nil
	}
	return cmp(a, b)
}

type semver struct {
	major, minor, patch string
	pre                 []string
}

// parseSemver follows golang.org/x/mod/semver's grammar (which flagd uses,
// after prefixing "v"): MAJOR[.MINOR[.PATCH[-PRERELEASE][+BUILD]]], with
// the shorthands only without pre-release or build.
func parseSemver(v any) (semver, bool) {
	var s string
	if x, ok := v.(string); ok {
		s = x
	} else {
		s = fmt.Sprint(v) // flagd: fmt.Sprintf("%v"), so 1.2 is "1.2" and null "<nil>"
	}
	switch {
	case strings.HasPrefix(s, "v"):
		s = s[1:]
	case strings.HasPrefix(s, "V"):
		s = s[1:]
	}
	var out semver
	var ok bool
	if out.major, s, ok = semverNum(s); !ok {
		return semver{}, false
	}
	if s == "" {
		out.minor, out.patch = "0", "0"
		return out, true
	}
	if s[0] != '.' {
		return semver{}, false
	}
	if out.minor, s, ok = semverNum(s[1:]); !ok {
		return semver{}, false
	}
	if s == "" {
		out.patch = "0"
		return out, true
	}
	if s[0] != '.' {
		return semver{}, false
	}
	if out.patch, s, ok = semverNum(s[1:]); !ok {
		return semver{}, false
	}
	if strings.HasPrefix(s, "-") {
		pre, build, hasBuild := strings.Cut(s[1:], "+")
		out.pre = strings.Split(pre, ".")
		for _, id := range out.pre {
			if !semverIdent(id) || (isDigits(id) && len(id) > 1 && id[0] == '0') {
				return semver{}, false
			}
		}
		if hasBuild && !semverBuild(build) {
			return semver{}, false
		}
		return out, true
	}
	if strings.HasPrefix(s, "+") {
		return out, semverBuild(s[1:])
	}
	return out, s == ""
}

func semverNum(s string) (num, rest string, ok bool) {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 || (s[0] == '0' && i > 1) {
		return "", "", false
	}
	return s[:i], s[i:], true
}

func semverBuild(b string) bool {
	for _, id := range strings.Split(b, ".") {
		if !semverIdent(id) {
			return false
		}
	}
	return true
}

func semverIdent(id string) bool {
	if id == "" {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-') {
			return false
		}
	}
	return true
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// cmpNum compares decimal strings without leading zeros.
func cmpNum(a, b string) int {
	if len(a) != len(b) {
		if len(a) < len(b) {
			return -1
		}
		return 1
	}
	return strings.Compare(a, b)
}

func (a semver) compare(b semver) int {
	if c := cmpNum(a.major, b.major); c != 0 {
		return c
	}
	if c := cmpNum(a.minor, b.minor); c != 0 {
		return c
	}
	if c := cmpNum(a.patch, b.patch); c != 0 {
		return c
	}
	switch {
	case len(a.pre) == 0 && len(b.pre) == 0:
		return 0
	case len(a.pre) == 0:
		return 1
	case len(b.pre) == 0:
		return -1
	}
	for i := 0; i < len(a.pre) && i < len(b.pre); i++ {
		x, y := a.pre[i], b.pre[i]
		if x == y {
			continue
		}
		xd, yd := isDigits(x), isDigits(y)
		switch {
		case xd && yd:
			return cmpNum(x, y)
		case xd:
			return -1
		case yd:
			return 1
		}
		return strings.Compare(x, y)
	}
	switch {
	case len(a.pre) < len(b.pre):
		return -1
	case len(a.pre) > len(b.pre):
		return 1
	}
	return 0
}
