package knative

import (
	"context"
	"net/http"
	"strings"

	"github.com/pilotlight/pilotlight/router"
)

// Backend is the router's Backend in a cluster: it serves revisions from a Knative cluster: each revision is
// reached at its traffic tag's URL, and Knative's own activator and
// autoscaler do the scaling from zero. The flag still picks the revision
// for each request, so targeting and stickiness work as on one machine.
//
// With Services set, a revision is reached through its own Kubernetes
// Service instead (RevisionServices): no tag URL, so no networking layer
// and no cluster DNS between the router and the revision.
type Backend struct {
	Resolver *Resolver
	Services *RevisionServices
}

// Acquire implements router.Backend.
func (b Backend) Acquire(ctx context.Context, function, revision string) (router.Target, error) {
	if b.Services != nil {
		base, header, err := b.Services.Resolve(ctx, function, revision)
		if err != nil {
			if ctx.Err() != nil {
				return router.Target{}, ctx.Err()
			}
			return router.Target{}, router.Errorf(http.StatusServiceUnavailable, "%s", err.Error())
		}
		return router.Target{BaseURL: base, Header: header, Release: func(failed bool) {
			if failed {
				b.Services.Invalidate(revision)
			}
		}}, nil
	}
	u, err := b.Resolver.Resolve(ctx, function, revision)
	if err != nil {
		if ctx.Err() != nil {
			return router.Target{}, ctx.Err()
		}
		return router.Target{}, router.Errorf(http.StatusServiceUnavailable, "%s", err.Error())
	}
	return router.Target{
		BaseURL: strings.TrimSuffix(u.String(), "/"),
		Release: func(failed bool) {
			if failed {
				// The tag may have moved or the route changed: read the Service again next time.
				b.Resolver.Invalidate(function)
			}
		},
	}, nil
}
