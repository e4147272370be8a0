package router

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/open-feature/go-sdk/openfeature"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/flags"
	"github.com/pilotlight/pilotlight/functions"
)

// Headers that never become targeting attributes: credentials.
var secretHeaders = map[string]bool{"authorization": true, "cookie": true, "x-api-key": true, "proxy-authorization": true}

// FlagPicker picks each request's revision with the function's flag
// (function.yaml's flag, default "<function>-revision"), evaluated through
// the OpenFeature SDK against the flag file the watcher keeps current.
// The evaluation context is the targeting key (see TargetingKey) plus
// attributes: "function", "email" (X-User-Email), "region" (X-Region) and
// "headers" (every request header, lower-cased, first value; credentials
// left out). A variant naming a revision the function does not have never
// gets traffic: the flag's default variant is used, or the function's
// stable revision, and the fallback is counted.
type FlagPicker struct {
	watcher   *flags.Watcher
	client    *openfeature.Client
	fallbacks *prometheus.CounterVec
	hooked    atomic.Bool // an OpenFeature hook watches every evaluation (tracing)
	cache     *flagCache  // nil: every evaluation runs the rule
}

var pickerDomains atomic.Int64

// NewFlagPicker registers the watcher's provider with OpenFeature under a
// domain of its own and returns the picker.
func NewFlagPicker(w *flags.Watcher, _ string, reg prometheus.Registerer) (*FlagPicker, error) {
	domain := fmt.Sprintf("pilotlight-router-%d", pickerDomains.Add(1))
	if err := openfeature.SetNamedProviderAndWait(domain, w.Provider()); err != nil {
		return nil, fmt.Errorf("register the flag provider with OpenFeature: %w", err)
	}
	p := &FlagPicker{watcher: w, client: openfeature.NewClient(domain),
		fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pilotlight_flags_fallback_total",
			Help: "Requests whose flag gave no usable revision (reason: unknown_revision, or the evaluation's reason or error code), served by the default instead."},
			[]string{"function", "reason"})}
	p.cache = newFlagCache()
	if reg != nil {
		reg.MustRegister(p.fallbacks)
		reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "pilotlight_flags_cache_entries",
				Help: "Flag evaluations the router remembers for the current flag file (bounded)."},
				func() float64 { n, _ := p.cache.stats(); return float64(n) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "pilotlight_flags_cache_bytes",
				Help: "Estimated memory of the remembered flag evaluations (bounded)."},
				func() float64 { _, b := p.cache.stats(); return float64(b) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "pilotlight_flags_cache_hits_total",
				Help: "Flag evaluations answered from the cache."},
				func() float64 { return float64(p.cache.hits.Load()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "pilotlight_flags_cache_misses_total",
				Help: "Cacheable flag evaluations that ran the rule (then remembered)."},
				func() float64 { return float64(p.cache.misses.Load()) }),
		)
	}
	return p, nil
}

// attributes is the evaluation context's attributes; "headers" only when
// the flag's targeting reads it (building it copies every header).
func attributes(fn *functions.Manifest, r RequestView, set *flags.Set) map[string]any {
	attrs := map[string]any{"function": fn.Name}
	if set.Reads(fn.Flag, "headers") {
		headers := map[string]any{}
		r.EachHeader(func(k, v string) {
			lk := strings.ToLower(k)
			if _, seen := headers[lk]; !seen && !secretHeaders[lk] {
				headers[lk] = v // the first value, as net/http's Header.Get
			}
		})
		attrs["headers"] = headers
	}
	for _, name := range headerAttributes {
		if v, ok := stringAttribute(name, fn, r); ok {
			attrs[name] = v
		}
	}
	return attrs
}

// headerAttributes are the string attributes taken from one header each.
var headerAttributes = [...]string{"email", "region"}

// stringAttribute is one string attribute of the evaluation context, as
// attributes builds it: the one place that says where each comes from.
func stringAttribute(name string, fn *functions.Manifest, r RequestView) (string, bool) {
	var v string
	switch name {
	case "function":
		return fn.Name, true
	case "email":
		v = r.Header("X-User-Email")
	case "region":
		v = r.Header("X-Region")
	}
	return v, v != ""
}

// Set is the flag state the picker evaluates now (a FlagSource: OFREP
// answers from it).
func (p *FlagPicker) Set() *flags.Set { return p.watcher.Set() }

// EvaluationContext is the context the picker evaluates fn's flag with
// for a request (and its body), flattened as OpenFeature hands it to a
// provider: the targeting key under "targetingKey" plus the attributes.
// It is built by the one builder Pick uses (flatContext): an application
// that sends this context over OFREP gets the variant the router picks
// for the request.
func (p *FlagPicker) EvaluationContext(fn *functions.Manifest, r *http.Request, body []byte) map[string]any {
	view := httpView{r}
	key, _ := targetingKey(view, body)
	return flatContext(fn, view, p.watcher.Set(), key)
}

// flatContext is the flattened evaluation context: the attributes and
// the targeting key.
func flatContext(fn *functions.Manifest, r RequestView, set *flags.Set, key string) map[string]any {
	attrs := attributes(fn, r, set)
	attrs[openfeature.TargetingKey] = key
	return attrs
}

// Pick implements Picker: the flag is evaluated through OpenFeature and
// its value mapped to a revision by flags' one rule (ServingRevision). ctx
// carries the request's span, for the tracing hook.
func (p *FlagPicker) Pick(ctx context.Context, fn *functions.Manifest, r RequestView, body []byte) (string, error) {
	return p.pick(ctx, fn, r, body), nil
}

func (p *FlagPicker) pick(ctx context.Context, fn *functions.Manifest, r RequestView, body []byte) string {
	set := p.watcher.Set()
	var value, reason, code string
	if p.hooked.Load() {
		// Hooks (the tracing span) see every evaluation through the SDK.
		key, _ := targetingKey(r, body)
		d, _ := p.client.StringValueDetails(context.WithoutCancel(ctx), fn.Flag, "", openfeature.NewEvaluationContext(key, attributes(fn, r, set)))
		value, reason, code = d.Value, string(d.Reason), string(d.ErrorCode)
	} else {
		e := p.evaluate(set, fn, r, body)
		value, reason, code = e.value, e.reason, e.code
	}
	rev, _, fellBack := set.ServingRevision(fn, value)
	switch {
	case fellBack:
		p.fallbacks.WithLabelValues(fn.Name, "unknown_revision").Inc()
	case value == "":
		if code != "" {
			reason = code
		}
		p.fallbacks.WithLabelValues(fn.Name, strings.ToLower(reason)).Inc()
	}
	return rev
}

// evaluate answers as the provider would (no hook to run): from the cache
// when the flag's rule reads only attributes taken from the request and
// this request carries its own targeting key (a random one would never
// come again), else by running the rule.
func (p *FlagPicker) evaluate(set *flags.Set, fn *functions.Manifest, r RequestView, body []byte) evaluation {
	if p.cache == nil || set.ContextFree(fn.Flag) {
		return evaluateUncached(set, fn, r, body)
	}
	if inputs, ok := set.DeferredInputs(fn.Flag); ok && !slices.Contains(inputs, "headers") {
		return p.evaluateDeferred(set, fn, r, body, inputs)
	}
	inputs, ok := set.Inputs(fn.Flag)
	if !ok {
		return evaluateUncached(set, fn, r, body)
	}
	var buf [256]byte
	key := appendInput(buf[:0], fn.Flag, true)
	tk, haveTK := "", false
	for _, name := range inputs {
		switch name {
		case "headers": // every header: no better than running the rule
			return evaluateUncached(set, fn, r, body)
		case openfeature.TargetingKey:
			var random bool
			if tk, random = targetingKey(r, body); random {
				return evaluateWith(set, fn, r, tk)
			}
			haveTK = true
			key = appendInput(key, tk, true)
		default:
			v, present := stringAttribute(name, fn, r)
			key = appendInput(key, v, present)
		}
	}
	g, h := p.cache.generation(set), p.cache.hash(key)
	if c, ok := p.cache.get(g, key, h); ok {
		return c.e
	}
	if !haveTK {
		tk, _ = targetingKey(r, body)
	}
	e := evaluateWith(set, fn, r, tk)
	if p.cache.admit(h) {
		p.cache.put(g, key, h, cached{e: e})
	}
	return e
}

// evaluateDeferred is evaluate for a flag that reads the targeting key
// only to split by it: its answer is remembered under the other inputs
// alone, so every user with the same attributes shares one entry (a new
// user costs a lookup and a hash), and the request's key picks the bucket.
// A random key (the request has none) picks a random bucket, as running
// the rule with it would.
func (p *FlagPicker) evaluateDeferred(set *flags.Set, fn *functions.Manifest, r RequestView, body []byte, inputs []string) evaluation {
	var buf [256]byte
	key := append(appendInput(buf[:0], fn.Flag, true), '/') // never a key of evaluate's: theirs go on with 0 or 1
	for _, name := range inputs {
		v, present := stringAttribute(name, fn, r)
		key = appendInput(key, v, present)
	}
	g, h := p.cache.generation(set), p.cache.hash(key)
	c, ok := p.cache.get(g, key, h)
	if !ok {
		d, _ := set.EvaluateDeferred(fn.Flag, attributes(fn, r, set))
		c = cached{split: d}
		for i := range d.Results {
			c.evals = append(c.evals, resolved(d.ResolveString(i, "")))
		}
		if len(c.evals) == 1 {
			c = cached{e: c.evals[0]}
		}
		if p.cache.admit(h) {
			p.cache.put(g, key, h, c)
		}
	}
	if c.split == nil {
		return c.e
	}
	tk, _ := targetingKey(r, body)
	return c.answer(tk)
}

// evaluateUncached asks set what the provider would answer the SDK, with
// the flattened context the SDK would give it (targetingKey plus the
// attributes; no API or client context is ever set here), and none at all
// for a flag whose answer cannot depend on the request.
func evaluateUncached(set *flags.Set, fn *functions.Manifest, r RequestView, body []byte) evaluation {
	if set.ContextFree(fn.Flag) {
		return resolved(set.ResolveString(fn.Flag, "", nil))
	}
	key, _ := targetingKey(r, body)
	return evaluateWith(set, fn, r, key)
}

// evaluateWith is evaluateUncached for a flag that reads the request, with
// its targeting key already found.
func evaluateWith(set *flags.Set, fn *functions.Manifest, r RequestView, key string) evaluation {
	return resolved(set.ResolveStringOwned(fn.Flag, "", flatContext(fn, r, set, key))) // the context is this call's alone
}

// resolved keeps what the picker reads of an answer. The metadata is
// dropped first: ResolutionDetail would copy it, per request, for nothing.
func resolved(res openfeature.StringResolutionDetail) evaluation {
	res.FlagMetadata = nil
	return evaluation{value: res.Value, reason: string(res.Reason), code: string(res.ResolutionDetail().ErrorCode)}
}

// Weights implements Picker: the split for requests no targeting rule
// matches, as the Knative traffic block has it.
func (p *FlagPicker) Weights(fn *functions.Manifest) map[string]int {
	split := p.watcher.Set().Split(fn)
	out := make(map[string]int, len(split))
	for rev, pct := range split {
		out[rev] = int(pct)
	}
	return out
}
