package flags

import (
	"context"
	"fmt"
	"maps"
	"math"
	"reflect"
	"slices"
	"sync/atomic"

	"github.com/open-feature/go-sdk/openfeature"
)

// ProviderName is the provider's name in OpenFeature metadata.
const ProviderName = "pilotlight-flagd-file"

// Provider is an OpenFeature provider backed by a *Set that Swap replaces
// atomically: evaluations take no lock. It also implements
// openfeature.StateHandler and openfeature.EventHandler (a swap emits
// PROVIDER_CONFIGURATION_CHANGED naming the flags that changed).
type Provider struct {
	set    atomic.Pointer[Set]
	events chan openfeature.Event
}

var (
	_ openfeature.FeatureProvider = (*Provider)(nil)
	_ openfeature.StateHandler    = (*Provider)(nil)
	_ openfeature.EventHandler    = (*Provider)(nil)
)

// NewProvider returns a provider serving s (which must not be nil).
func NewProvider(s *Set) *Provider {
	p := &Provider{events: make(chan openfeature.Event, 16)}
	p.set.Store(s)
	return p
}

// Set is the flag set evaluations use now.
func (p *Provider) Set() *Set { return p.set.Load() }

// Swap makes s the flag set for every later evaluation and reports the keys
// of the flags that differ (added, removed or changed), sorted.
func (p *Provider) Swap(s *Set) []string {
	old := p.set.Swap(s)
	changed := ChangedFlags(old, s)
	if old == nil || old.version != s.version {
		select {
		case p.events <- openfeature.Event{ProviderName: ProviderName, EventType: openfeature.ProviderConfigChange,
			ProviderEventDetails: openfeature.ProviderEventDetails{Message: "flag file reloaded", FlagChanges: changed,
				EventMetadata: map[string]any{"version": s.version}}}:
		default: // nobody is listening; never block a reload
		}
	}
	return changed
}

// ChangedFlags lists the keys of flags added, removed or changed between two
// sets, sorted. A nil set has no flags.
func ChangedFlags(old, cur *Set) []string {
	var oldFlags, curFlags map[string]*flag
	if old != nil {
		oldFlags = old.flags
	}
	if cur != nil {
		curFlags = cur.flags
	}
	var out []string
	for k, f := range curFlags {
		if o, ok := oldFlags[k]; !ok || !reflect.DeepEqual(o.raw, f.raw) || !reflect.DeepEqual(o.metadata, f.metadata) {
			out = append(out, k)
		}
	}
	for k := range oldFlags {
		if _, ok := curFlags[k]; !ok {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// Metadata implements openfeature.FeatureProvider.
func (p *Provider) Metadata() openfeature.Metadata { return openfeature.Metadata{Name: ProviderName} }

// Hooks implements openfeature.FeatureProvider.
func (p *Provider) Hooks() []openfeature.Hook { return nil }

// Init implements openfeature.StateHandler: the provider is ready at once.
func (p *Provider) Init(openfeature.EvaluationContext) error { return nil }

// Shutdown implements openfeature.StateHandler.
func (p *Provider) Shutdown() {}

// EventChannel implements openfeature.EventHandler.
func (p *Provider) EventChannel() <-chan openfeature.Event { return p.events }

// BooleanEvaluation implements openfeature.FeatureProvider.
func (p *Provider) BooleanEvaluation(_ context.Context, flag string, def bool, ctx openfeature.FlattenedContext) openfeature.BoolResolutionDetail {
	return resolve(p.Set().Evaluate(flag, ctx), def, "boolean", func(v any) (bool, bool) { b, ok := v.(bool); return b, ok })
}

// StringEvaluation implements openfeature.FeatureProvider.
func (p *Provider) StringEvaluation(_ context.Context, flag string, def string, ctx openfeature.FlattenedContext) openfeature.StringResolutionDetail {
	return p.Set().ResolveString(flag, def, ctx)
}

// ResolveString is StringEvaluation against s rather than the provider's
// current set, for a caller that must answer from the one Set it read
// (the router, which also maps the value to a revision with that Set).
func (s *Set) ResolveString(flag string, def string, ctx openfeature.FlattenedContext) openfeature.StringResolutionDetail {
	return resolve(s.Evaluate(flag, ctx), def, "string", asString)
}

// ResolveStringOwned is ResolveString for a context built for this one
// evaluation: it becomes the rule's data (the caller must not use it
// again), sparing a copy per request.
func (s *Set) ResolveStringOwned(flag string, def string, ctx map[string]any) openfeature.StringResolutionDetail {
	return resolve(s.evaluate(flag, ctx, true), def, "string", asString)
}

func asString(v any) (string, bool) { s, ok := v.(string); return s, ok }

// FloatEvaluation implements openfeature.FeatureProvider.
func (p *Provider) FloatEvaluation(_ context.Context, flag string, def float64, ctx openfeature.FlattenedContext) openfeature.FloatResolutionDetail {
	return resolve(p.Set().Evaluate(flag, ctx), def, "float", AsFloat)
}

// IntEvaluation implements openfeature.FeatureProvider.
func (p *Provider) IntEvaluation(_ context.Context, flag string, def int64, ctx openfeature.FlattenedContext) openfeature.IntResolutionDetail {
	return resolve(p.Set().Evaluate(flag, ctx), def, "integer", AsInt)
}

// ObjectEvaluation implements openfeature.FeatureProvider. Like flagd, only
// object (JSON map) variants satisfy an object request.
func (p *Provider) ObjectEvaluation(_ context.Context, flag string, def any, ctx openfeature.FlattenedContext) openfeature.InterfaceResolutionDetail {
	return resolve(p.Set().Evaluate(flag, ctx), def, "object", func(v any) (any, bool) {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		return maps.Clone(m), true
	})
}

// AsFloat accepts any number.
func AsFloat(v any) (float64, bool) {
	f, ok := v.(float64)
	return f, ok
}

// AsInt accepts a number only when it converts losslessly: whole and within
// ±(2^53-1) (flagd ADR numeric-coercion; 10.0 is 10, 3.14 is a mismatch).
func AsInt(v any) (int64, bool) {
	f, ok := v.(float64)
	if !ok || f != math.Trunc(f) || math.Abs(f) > maxSafeInt {
		return 0, false
	}
	return int64(f), true
}

// resolve turns a Result into a typed OpenFeature resolution.
func resolve[T any](r Result, def T, typ string, conv func(any) (T, bool)) openfeature.GenericResolutionDetail[T] {
	d := openfeature.GenericResolutionDetail[T]{Value: def, ProviderResolutionDetail: openfeature.ProviderResolutionDetail{
		Reason: openfeature.Reason(r.Reason), Variant: r.Variant, FlagMetadata: r.Metadata}}
	if r.ErrorCode != "" {
		d.ResolutionError = resolutionError(r.ErrorCode, r.ErrorMessage)
		return d
	}
	if r.Value == nil { // DISABLED or code default: the caller's value
		return d
	}
	v, ok := conv(r.Value)
	if !ok {
		d.Reason = openfeature.ErrorReason
		d.ResolutionError = openfeature.NewTypeMismatchResolutionError(
			fmt.Sprintf("variant %q is %s, not %s", r.Variant, kindOf(r.Value), typ))
		return d
	}
	d.Value = v
	return d
}

func resolutionError(code, msg string) openfeature.ResolutionError {
	switch code {
	case ErrFlagNotFound:
		return openfeature.NewFlagNotFoundResolutionError(msg)
	case ErrTypeMismatch:
		return openfeature.NewTypeMismatchResolutionError(msg)
	case ErrParse:
		return openfeature.NewParseErrorResolutionError(msg)
	}
	return openfeature.NewGeneralResolutionError(msg)
}
