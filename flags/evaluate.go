package flags

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/diegoholiveira/jsonlogic/v3"
)

// Reasons (OpenFeature's, as flagd uses them).
const (
	ReasonStatic         = "STATIC"
	ReasonTargetingMatch = "TARGETING_MATCH"
	ReasonDefault        = "DEFAULT"
	ReasonDisabled       = "DISABLED"
	ReasonError          = "ERROR"
)

// Error codes (OpenFeature's).
const (
	ErrFlagNotFound = "FLAG_NOT_FOUND"
	ErrTypeMismatch = "TYPE_MISMATCH"
	ErrParse        = "PARSE_ERROR"
	ErrGeneral      = "GENERAL"
)

// flagdKey is the context property flagd injects: {"flagKey", "timestamp"}.
const flagdKey = "$flagd"

// Result is one evaluation. Value is nil and Variant empty when the caller's
// own default applies: the flag is DISABLED, or has no defaultVariant and
// nothing else decided (reason DEFAULT), or on ERROR. Metadata is the flag
// set's metadata overlaid with the flag's; it is shared, do not modify it.
type Result struct {
	Value        any
	Variant      string
	Reason       string
	ErrorCode    string
	ErrorMessage string
	Metadata     map[string]any
}

// Evaluate evaluates a flag for an evaluation context (attribute name to
// value; "targetingKey" is the subject's key), as flagd does. The context is
// not modified.
func (s *Set) Evaluate(flagKey string, ctx map[string]any) Result {
	return s.evaluate(flagKey, ctx, false)
}

// evaluate is Evaluate; owned says ctx may become the rule's data (the
// caller built it for this one evaluation), which spares a copy.
func (s *Set) evaluate(flagKey string, ctx map[string]any, owned bool) Result {
	f, ok := s.flags[flagKey]
	if !ok {
		return Result{Reason: ReasonError, ErrorCode: ErrFlagNotFound,
			ErrorMessage: fmt.Sprintf("flag %q not found", flagKey), Metadata: s.metadata}
	}
	if f.state == StateDisabled {
		return Result{Reason: ReasonDisabled, Metadata: f.metadata}
	}
	if !f.targeted {
		if !f.hasDefault {
			return Result{Reason: ReasonDefault, Metadata: f.metadata}
		}
		return Result{Value: f.variants[f.defVariant], Variant: f.defVariant, Reason: ReasonStatic, Metadata: f.metadata}
	}
	if f.parseErr != "" {
		return Result{Reason: ReasonError, ErrorCode: ErrParse,
			ErrorMessage: fmt.Sprintf("flag %q: targeting cannot run: %s", flagKey, f.parseErr), Metadata: f.metadata}
	}
	out, err := applyRule(f.targeting, contextData(f, ctx, owned))
	if err != nil {
		return Result{Reason: ReasonError, ErrorCode: ErrParse,
			ErrorMessage: fmt.Sprintf("flag %q: targeting failed: %v", flagKey, err), Metadata: f.metadata}
	}
	return f.outcome(out)
}

// ContextFree reports whether a flag's answer cannot depend on the
// evaluation context: missing, DISABLED, without targeting, or with
// targeting that cannot run. The router evaluates such a flag without
// building a context per request.
func (s *Set) ContextFree(flagKey string) bool {
	f, ok := s.flags[flagKey]
	return !ok || f.state == StateDisabled || !f.targeted || f.parseErr != ""
}

// outcome is the result of targeting that returned out, as flagd reads it:
// null is the default variant (DEFAULT), anything else names a variant by
// its text, and a name that is not a variant is an ERROR (GENERAL).
func (f *flag) outcome(out any) Result {
	flagKey := f.key
	if out == nil {
		if !f.hasDefault {
			return Result{Reason: ReasonDefault, Metadata: f.metadata}
		}
		return Result{Value: f.variants[f.defVariant], Variant: f.defVariant, Reason: ReasonDefault, Metadata: f.metadata}
	}
	name, _ := variantName(out)
	if val, ok := f.variants[name]; ok {
		return Result{Value: val, Variant: name, Reason: ReasonTargetingMatch, Metadata: f.metadata}
	}
	return Result{Reason: ReasonError, ErrorCode: ErrGeneral,
		ErrorMessage: fmt.Sprintf("flag %q: targeting returned variant %q, which is not one of %s",
			flagKey, name, strings.Join(slices.Sorted(maps.Keys(f.variants)), ", ")),
		Metadata: f.metadata}
}

// applyRule runs JSONLogic, turning any panic of the engine into an error
// (jsonlogic recovers only panics whose value is an error).
func applyRule(rule, data any) (out any, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	//lint:ignore SA1019 the only jsonlogic v3.5 call that takes decoded values; Apply would re-encode the rule and context on every evaluation
	return jsonlogic.ApplyInterface(rule, data)
}

// contextData is what targeting sees: the context with JSON types only (as
// flagd, which round-trips it through JSON) plus the injected $flagd. An
// owned ctx is converted in place and becomes the data.
func contextData(f *flag, ctx map[string]any, owned bool) map[string]any {
	data := ctx
	if !owned || data == nil {
		data = make(map[string]any, len(ctx)+1)
	}
	for k, v := range ctx {
		switch v.(type) {
		case string, bool, float64, nil: // already JSON's
			if owned {
				continue
			}
		}
		data[k] = jsonValue(v)
	}
	data[flagdKey] = f.flagdProps(time.Now().Unix())
	return data
}

// flagdProps is $flagd for an evaluation in second now. It is built once
// a second per flag and shared: nothing in an evaluation writes to its data
// (jsonlogic's own operators build new maps; flagd's read only).
func (f *flag) flagdProps(now int64) map[string]any {
	if p := f.flagd.Load(); p != nil && p.second == now {
		return p.props
	}
	p := &flagdProps{second: now, props: map[string]any{"flagKey": f.key, "timestamp": float64(now)}}
	f.flagd.Store(p)
	return p.props
}

type flagdProps struct {
	second int64
	props  map[string]any
}

// jsonValue converts a Go value to what encoding/json would decode it as.
func jsonValue(v any) any {
	switch x := v.(type) {
	case nil, string, bool, float64:
		return v
	case int:
		return float64(x)
	case int64:
		return float64(x)
	case int32:
		return float64(x)
	case int16:
		return float64(x)
	case int8:
		return float64(x)
	case uint:
		return float64(x)
	case uint64:
		return float64(x)
	case uint32:
		return float64(x)
	case uint16:
		return float64(x)
	case uint8:
		return float64(x)
	case float32:
		return float64(x)
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = jsonValue(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = jsonValue(e)
		}
		return out
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		return nil
	}
	return out
}
