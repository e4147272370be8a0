// Command controller is Knative serving's controller with its health-probe
// server off: the stock binary binds :8080 for probes, as the autoscaler's
// stats server does, and both run in one network namespace here. The
// controllers are the stock ones (cert-manager's is left out: the harness
// never enables external-domain TLS).
package main

import (
	"knative.dev/pkg/injection"
	"knative.dev/pkg/injection/sharedmain"
	"knative.dev/pkg/signals"
	"knative.dev/serving/pkg/reconciler/configuration"
	"knative.dev/serving/pkg/reconciler/domainmapping"
	"knative.dev/serving/pkg/reconciler/gc"
	"knative.dev/serving/pkg/reconciler/labeler"
	"knative.dev/serving/pkg/reconciler/nscert"
	"knative.dev/serving/pkg/reconciler/revision"
	"knative.dev/serving/pkg/reconciler/route"
	"knative.dev/serving/pkg/reconciler/serverlessservice"
	"knative.dev/serving/pkg/reconciler/service"
)

func main() {
	ctx := sharedmain.WithHealthProbesDisabled(signals.NewContext())
	cfg := injection.ParseAndGetRESTConfigOrDie()
	sharedmain.MainWithConfig(ctx, "controller", cfg,
		configuration.NewController, labeler.NewController, revision.NewController,
		route.NewController, serverlessservice.NewController, service.NewController,
		gc.NewController, nscert.NewController, domainmapping.NewController)
}
