package knative

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	servingclient "knative.dev/serving/pkg/client/clientset/versioned/typed/serving/v1"
)

// DefaultResolveTTL is how long a resolved URL is trusted before the Service
// is read again: a tag can move to another revision on the next deploy.
const DefaultResolveTTL = 10 * time.Second

// Resolver maps a function revision to the URL that reaches exactly that
// revision: its traffic tag's URL from the Service's status.traffic, or the
// Service URL when the revision takes all the traffic. It reads a Service on a
// miss or once its entry is older than TTL; the router evaluates the flag and
// proxies to what Resolve returns.
type Resolver struct {
	client    servingclient.ServingV1Interface
	namespace string
	ttl       time.Duration
	now       func() time.Time

	mu    sync.Mutex
	cache map[string]resolved // by function
}

type resolved struct {
	at   time.Time
	urls map[string]*url.URL // by revision
	tags []string
}

// NewResolver resolves functions deployed in namespace (serve's
// --namespace, whose default the deployer owns); ttl <= 0 means
// DefaultResolveTTL.
func NewResolver(client servingclient.ServingV1Interface, namespace string, ttl time.Duration) *Resolver {
	if ttl <= 0 {
		ttl = DefaultResolveTTL
	}
	return &Resolver{client: client, namespace: namespace, ttl: ttl, now: time.Now, cache: map[string]resolved{}}
}

// SetClock replaces the clock the cache's TTL is measured with (a fake
// clock in tests).
func (r *Resolver) SetClock(now func() time.Time) { r.now = now }

// Resolve returns the URL serving function's revision. A revision missing
// from the cached status causes one fresh read of the Service before it is
// reported as unknown.
func (r *Resolver) Resolve(ctx context.Context, function, revision string) (*url.URL, error) {
	r.mu.Lock()
	entry, ok := r.cache[function]
	r.mu.Unlock()
	if ok && r.now().Sub(entry.at) < r.ttl {
		if u, hit := entry.urls[revision]; hit {
			return cloneURL(u), nil
		}
	}
	entry, err := r.refresh(ctx, function)
	if err != nil {
		return nil, err
	}
	if u, hit := entry.urls[revision]; hit {
		return cloneURL(u), nil
	}
	return nil, fmt.Errorf("function %s: revision %s has no URL in service %s/%s status.traffic (tagged: %v); "+
		"give it a tag in function.yaml and run `pilotlight deploy %s`", function, revision, r.namespace, function, entry.tags, function)
}

// Invalidate drops what is known about function, so the next Resolve reads
// the Service again (for a caller whose request to a resolved URL failed).
func (r *Resolver) Invalidate(function string) {
	r.mu.Lock()
	delete(r.cache, function)
	r.mu.Unlock()
}

func (r *Resolver) refresh(ctx context.Context, function string) (resolved, error) {
	svc, err := r.client.Services(r.namespace).Get(ctx, function, metav1.GetOptions{})
	if err != nil {
		return resolved{}, fmt.Errorf("function %s: get knative service %s/%s: %w", function, r.namespace, function, err)
	}
	entry := urlsFromStatus(svc)
	entry.at = r.now()
	r.mu.Lock()
	r.cache[function] = entry
	r.mu.Unlock()
	return entry, nil
}

// urlsFromStatus reads what Knative's route controller published: only
// status.traffic, never spec, because a URL exists once Knative made it.
func urlsFromStatus(svc *servingv1.Service) resolved {
	out := resolved{urls: map[string]*url.URL{}}
	for _, t := range svc.Status.Traffic {
		if t.RevisionName == "" {
			continue
		}
		if t.Tag != "" && t.URL != nil {
			out.tags = append(out.tags, t.Tag+"="+t.RevisionName)
			if _, seen := out.urls[t.RevisionName]; !seen {
				out.urls[t.RevisionName] = t.URL.URL()
			}
		}
	}
	for _, t := range svc.Status.Traffic {
		if t.Percent != nil && *t.Percent == 100 && svc.Status.URL != nil {
			if _, seen := out.urls[t.RevisionName]; !seen && t.RevisionName != "" {
				out.urls[t.RevisionName] = svc.Status.URL.URL()
			}
		}
	}
	slices.Sort(out.tags)
	return out
}

func cloneURL(u *url.URL) *url.URL {
	c := *u
	return &c
}
