package router

import (
	"context"
	"fmt"
	"net/http"
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

func attributes(fn *functions.Manifest, r *http.Request) map[string]any {
	headers := make(map[string]any, len(r.Header))
	for k, vs := range r.Header {
		lk := strings.ToLower(k)
		if len(vs) > 0 && !secretHeaders[lk] {
			headers[lk] = vs[0]
		}
	}
	attrs := map[string]any{"function": fn.Name, "headers": headers}
	if v := r.Header.Get("X-User-Email"); v != "" {
		attrs["email"] = v
	}
	if v := r.Header.Get("X-Region"); v != "" {
		attrs["region"] = v
	}
	return attrs
}

// Pick implements Picker: the flag is evaluated through the OpenFeature SDK
// and its value mapped to a revision by flags' one rule (ServingRevision).
func (p *FlagPicker) Pick(fn *functions.Manifest, r *http.Request, body []byte) (string, error) {
	key, _ := TargetingKey(r, body)
	d, _ := p.client.StringValueDetails(context.WithoutCancel(r.Context()), fn.Flag, "", openfeature.NewEvaluationContext(key, attributes(fn, r)))
	rev, _, fellBack := p.watcher.Set().ServingRevision(fn, d.Value)
	switch {
	case fellBack:
		p.fallbacks.WithLabelValues(fn.Name, "unknown_revision").Inc()
	case d.Value == "":
		reason := string(d.Reason)
		if d.ErrorCode != "" {
			reason = string(d.ErrorCode)
		}
		p.fallbacks.WithLabelValues(fn.Name, strings.ToLower(reason)).Inc()
	}
	return rev, nil
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
