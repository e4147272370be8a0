package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/pilotlight/pilotlight/bpf"
)

// Reader gathers the latest cold-start timeline of each revision from every
// node's agent, found through the agents' Service's EndpointSlices (as the
// rollout controller finds the router's replicas): the console's source in
// cluster mode. Each agent answers GET /timelines on its metrics port.
type Reader struct {
	Client             kubernetes.Interface
	Namespace, Service string // config/security/bpf-agent.yaml: pilotlight-system/pilotlight-bpf-agent
	Port               int32  // 0: 9464
	HTTP               *http.Client
	Log                *slog.Logger // nil: slog.Default()

	mu     sync.Mutex
	latest map[string]bpf.Timeline
}

// Latest is what the last Refresh gathered, keyed "function/revision".
func (r *Reader) Latest() map[string]bpf.Timeline {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.latest
}

// Run refreshes every interval until ctx ends. A failure is logged when
// it starts or changes, and the recovery once, so a router that may not
// read the agents (RBAC, a NetworkPolicy) says so without a line a tick.
func (r *Reader) Run(ctx context.Context, interval time.Duration) {
	log := r.Log
	if log == nil {
		log = slog.Default()
	}
	var failing string
	for {
		switch err := r.Refresh(ctx); {
		case err != nil && ctx.Err() == nil && err.Error() != failing:
			failing = err.Error()
			log.Warn("the console cannot read the eBPF agents' cold starts; the router needs list on endpointslices in their namespace and a NetworkPolicy path to their port (config/security)",
				"agents", r.Namespace+"/"+r.Service, "err", err)
		case err == nil && failing != "":
			failing = ""
			log.Info("the console reads the eBPF agents' cold starts again", "agents", r.Namespace+"/"+r.Service)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

// Refresh asks every ready agent for its timelines; of two agents' timelines
// of one revision (two nodes' pods), the one whose cold start ended last wins.
func (r *Reader) Refresh(ctx context.Context) error {
	list, err := r.Client.DiscoveryV1().EndpointSlices(r.Namespace).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + r.Service})
	if err != nil {
		return fmt.Errorf("list the EndpointSlices of Service %s/%s: %w", r.Namespace, r.Service, err)
	}
	port := r.Port
	if port == 0 {
		port = 9464
	}
	hc := r.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 2 * time.Second}
	}
	out := map[string]bpf.Timeline{}
	var firstErr error
	for _, s := range list.Items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			for _, addr := range e.Addresses {
				tls, err := fetch(ctx, hc, "http://"+net.JoinHostPort(addr, fmt.Sprint(port))+"/timelines")
				if err != nil {
					if firstErr == nil {
						firstErr = err
					}
					continue
				}
				for k, tl := range tls {
					if old, ok := out[k]; !ok || end(tl).After(end(old)) {
						out[k] = tl
					}
				}
			}
		}
	}
	r.mu.Lock()
	r.latest = out
	r.mu.Unlock()
	return firstErr
}

func fetch(ctx context.Context, hc *http.Client, url string) (map[string]bpf.Timeline, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	var tls map[string]bpf.Timeline
	if err := json.NewDecoder(resp.Body).Decode(&tls); err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	return tls, nil
}

// end is a timeline's last event.
func end(tl bpf.Timeline) time.Time {
	var t time.Time
	for _, e := range tl.Events {
		if e.Time.After(t) {
			t = e.Time
		}
	}
	return t
}
