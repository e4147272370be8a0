package router

import (
	"context"
	"fmt"
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
	if reg != nil {
		reg.MustRegister(p.fallbacks)
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
	if v := r.Header("X-User-Email"); v != "" {
		attrs["email"] = v
	}
	if v := r.Header("X-Region"); v != "" {
		attrs["region"] = v
	}
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
		// No hook to run: ask the provider the SDK would ask, with the
		// flattened context the SDK would give it (targetingKey plus the
		// attributes; no API or client context is ever set here), and none
		// at all for a flag whose answer cannot depend on the request.
		var attrs map[string]any
		if !set.ContextFree(fn.Flag) {
			key, _ := targetingKey(r, body)
			attrs = attributes(fn, r, set)
			attrs[openfeature.TargetingKey] = key
		}
		res := p.watcher.Provider().StringEvaluation(ctx, fn.Flag, "", attrs)
		value, reason, code = res.Value, string(res.Reason), string(res.ResolutionDetail().ErrorCode)
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
