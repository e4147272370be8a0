package knative

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
)

// The headers Knative's ingress adds for the activator, which reads the
// revision a request is for from them (knative.dev/serving/pkg/activator:
// RevisionHeaderName, RevisionHeaderNamespace).
const (
	headerRevision          = "Knative-Serving-Revision"
	headerRevisionNamespace = "Knative-Serving-Namespace"
)

// RevisionServices reaches a revision through the Kubernetes Service
// Knative makes for it (named as the revision): its ClusterIP, read from the
// API the router already talks to, so no cluster DNS and no networking
// layer (KIngress) is on the path. Behind that Service stand the revision's
// pods (queue-proxy first) or, while it is at zero, Knative's activator,
// which holds the request through the cold start; the activator learns the
// revision from the Knative-Serving-* headers, which the router sets here
// over anything a client sent, so a client cannot steer past the flag.
type RevisionServices struct {
	client    corev1client.ServicesGetter
	namespace string
	ttl       time.Duration
	now       func() time.Time

	mu    sync.Mutex
	cache map[string]revisionService // by revision
}

type revisionService struct {
	at   time.Time
	base string
}

// NewRevisionServices resolves revisions in namespace; ttl <= 0 means
// DefaultResolveTTL.
func NewRevisionServices(client corev1client.ServicesGetter, namespace string, ttl time.Duration) *RevisionServices {
	if ttl <= 0 {
		ttl = DefaultResolveTTL
	}
	return &RevisionServices{client: client, namespace: namespace, ttl: ttl, now: time.Now, cache: map[string]revisionService{}}
}

// Resolve returns the base URL of revision's Service and the headers that
// name the revision to the activator.
func (r *RevisionServices) Resolve(ctx context.Context, function, revision string) (string, [][2]string, error) {
	header := [][2]string{{headerRevision, revision}, {headerRevisionNamespace, r.namespace}}
	r.mu.Lock()
	e, ok := r.cache[revision]
	r.mu.Unlock()
	if ok && r.now().Sub(e.at) < r.ttl {
		return e.base, header, nil
	}
	svc, err := r.client.Services(r.namespace).Get(ctx, revision, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", nil, fmt.Errorf("function %s: revision %s has no Kubernetes Service %s/%s yet: Knative makes it once the revision exists; run `pilotlight deploy %s`",
			function, revision, r.namespace, revision, function)
	}
	if err != nil {
		return "", nil, fmt.Errorf("function %s: get service %s/%s: %w", function, r.namespace, revision, err)
	}
	base, err := serviceBase(svc)
	if err != nil {
		return "", nil, fmt.Errorf("function %s: %w", function, err)
	}
	r.mu.Lock()
	r.cache[revision] = revisionService{at: r.now(), base: base}
	r.mu.Unlock()
	return base, header, nil
}

// Invalidate drops what is known about revision.
func (r *RevisionServices) Invalidate(revision string) {
	r.mu.Lock()
	delete(r.cache, revision)
	r.mu.Unlock()
}

// serviceBase is http://ClusterIP:port of a revision's Service. Knative
// gives it one port: "http" (80) or, for a container port named h2c as
// the runtime's is, "http2" (81); both accept HTTP/1.1 and h2c, so REST and
// gRPC take the same one.
func serviceBase(svc *corev1.Service) (string, error) {
	ip := svc.Spec.ClusterIP
	if ip == "" || ip == corev1.ClusterIPNone {
		return "", fmt.Errorf("service %s/%s has no cluster IP", svc.Namespace, svc.Name)
	}
	for _, name := range []string{"http2", "http"} {
		for _, p := range svc.Spec.Ports {
			if p.Name == name {
				return "http://" + net.JoinHostPort(ip, strconv.Itoa(int(p.Port))), nil
			}
		}
	}
	return "", fmt.Errorf("service %s/%s has no port named http or http2", svc.Namespace, svc.Name)
}
