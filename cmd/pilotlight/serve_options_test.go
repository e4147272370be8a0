package main

import (
	"strings"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/router"
)

func TestServeOptionsRefuseWhatCannotWork(t *testing.T) {
	ok := func() *serveOptions {
		return &serveOptions{addr: "127.0.0.1:8080", backend: "local", limits: router.DefaultLimits(), requestTimeout: router.DefaultRequestTimeout}
	}
	if err := ok().validate(); err != nil {
		t.Fatalf("the defaults: %v", err)
	}
	for _, tc := range []struct {
		name     string
		change   func(o *serveOptions)
		mentions string
	}{
		{"write timeout equal to the request timeout", func(o *serveOptions) { o.limits.WriteTimeout = o.requestTimeout }, "must exceed --request-timeout"},
		{"write timeout below the request timeout", func(o *serveOptions) { o.limits.WriteTimeout, o.requestTimeout = 10*time.Second, time.Minute }, "cut off answers"},
		{"--dev off loopback", func(o *serveOptions) { o.dev, o.addr = true, "0.0.0.0:8080" }, "only listens on loopback"},
		{"a certificate without its key", func(o *serveOptions) { o.tlsCert = "cert.pem" }, "go together"},
		{"an unknown backend", func(o *serveOptions) { o.backend = "nomad" }, "use local"},
		{"an unknown way to reach a Knative revision", func(o *serveOptions) { o.backend, o.knativeVia = "knative", "dns" }, "use tag"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := ok()
			tc.change(o)
			err := o.validate()
			if err == nil || !strings.Contains(err.Error(), tc.mentions) {
				t.Fatalf("validate: %v, want an error mentioning %q", err, tc.mentions)
			}
		})
	}
}
