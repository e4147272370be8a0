package router

import (
	"context"
	"net/http"
	"strings"

	"github.com/pilotlight/pilotlight/router/knative"
)

// KnativeBackend serves revisions from a Knative cluster: each revision is
// reached at its traffic tag's URL, and Knative's own activator and
// autoscaler do the scaling from zero. The flag still picks the revision
// for each request, so targeting and stickiness work as on one machine.
type KnativeBackend struct {
	Resolver *knative.Resolver
}

// Acquire implements Backend.
func (b KnativeBackend) Acquire(ctx context.Context, function, revision string) (Target, error) {
	u, err := b.Resolver.Resolve(ctx, function, revision)
	if err != nil {
		if ctx.Err() != nil {
			return Target{}, ctx.Err()
		}
		return Target{}, &httpErr{code: http.StatusServiceUnavailable, msg: err.Error()}
	}
	return Target{
		BaseURL: strings.TrimSuffix(u.String(), "/"),
		Release: func(failed bool) {
			if failed {
				// The tag may have moved or the route changed: read the Service again next time.
				b.Resolver.Invalidate(function)
			}
		},
	}, nil
}
