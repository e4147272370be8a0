package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Where the analysis reads the candidate's live traffic. Router replicas
// each see their own share of it, so in a cluster the analysis reads them
// all: from Prometheus, which scrapes every replica (as Flagger does), or
// by scraping each replica itself through the router Service's
// EndpointSlices. On one machine the router's own registry is all of it.
const (
	SourceLocal         = "local"
	SourceEndpointSlice = "endpointslice"
	SourcePrometheus    = "prometheus"
)

// Bounds of one reading of the fleet.
const (
	// scrapeTimeout bounds one replica's /metrics (or one PromQL query).
	scrapeTimeout = 5 * time.Second
	// scrapeBodyBytes bounds one replica's /metrics answer.
	scrapeBodyBytes = 16 << 20
	// AdminPortName is the router Service's port that reaches each
	// replica's admin listener, where /metrics is open to scrapers
	// (config/router/router.yaml).
	AdminPortName = "admin"
)

// fleetSample is one revision's counters per router replica at one
// moment, and how many replicas the source knew of (read or not).
type fleetSample struct {
	source   string
	listed   int
	replicas map[string]sample
}

// TrafficSource reads a revision's cumulative request counters from every
// router replica it can reach.
type TrafficSource interface {
	sample(ctx context.Context, function, revision string) (fleetSample, error)
}

// GathererSource is this process's own registry: the one router on one
// machine.
type GathererSource struct{ Gatherer prometheus.Gatherer }

func (g GathererSource) sample(_ context.Context, function, revision string) (fleetSample, error) {
	mfs, err := g.Gatherer.Gather()
	if err != nil {
		return fleetSample{}, fmt.Errorf("reading the router's metrics: %w", err)
	}
	return fleetSample{source: SourceLocal, listed: 1, replicas: map[string]sample{"local": familiesSample(mfs, function, revision)}}, nil
}

// EndpointSliceSource scrapes /metrics of every ready endpoint of the
// router Service, found through its EndpointSlices (discovery.k8s.io/v1,
// as the endpoints controller keeps them), on the port named Port.
type EndpointSliceSource struct {
	Client    kubernetes.Interface
	Namespace string
	Service   string
	Port      string       // "": AdminPortName
	HTTP      *http.Client // nil: a client with scrapeTimeout
}

func (s *EndpointSliceSource) sample(ctx context.Context, function, revision string) (fleetSample, error) {
	targets, err := s.targets(ctx)
	if err != nil {
		return fleetSample{}, err
	}
	out := fleetSample{source: SourceEndpointSlice, listed: len(targets), replicas: map[string]sample{}}
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		errs []error
	)
	for _, target := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mfs, err := s.scrape(ctx, target)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			out.replicas[target] = familiesSample(mfs, function, revision)
		}()
	}
	wg.Wait()
	if len(out.replicas) == 0 {
		if len(targets) == 0 {
			return out, fmt.Errorf("the router Service %s/%s has no ready endpoints on port %q in its EndpointSlices", s.Namespace, s.Service, s.port())
		}
		return out, fmt.Errorf("no router replica's /metrics could be read: %w", errors.Join(errs...))
	}
	return out, nil
}

func (s *EndpointSliceSource) port() string {
	if s.Port == "" {
		return AdminPortName
	}
	return s.Port
}

// targets are host:port of the Service's ready endpoints.
func (s *EndpointSliceSource) targets(ctx context.Context) ([]string, error) {
	return serviceEndpoints(ctx, s.Client, s.Namespace, s.Service, s.port(), "")
}

// serviceEndpoints are host:port on the port named port of a Service's
// ready endpoints, as kube-proxy would pick them (a nil ready condition
// counts as ready, per the API), but the pod named skip's.
func serviceEndpoints(ctx context.Context, client kubernetes.Interface, namespace, service, port, skip string) ([]string, error) {
	list, err := client.DiscoveryV1().EndpointSlices(namespace).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + service})
	if err != nil {
		return nil, fmt.Errorf("list the EndpointSlices of Service %s/%s: %w", namespace, service, err)
	}
	seen := map[string]bool{}
	var out []string
	for _, sl := range list.Items {
		var num int32
		for _, p := range sl.Ports {
			if p.Name != nil && *p.Name == port && p.Port != nil {
				num = *p.Port
			}
		}
		if num == 0 {
			continue
		}
		for _, e := range sl.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			if skip != "" && e.TargetRef != nil && e.TargetRef.Name == skip {
				continue
			}
			for _, a := range e.Addresses {
				t := net.JoinHostPort(a, strconv.Itoa(int(num)))
				if !seen[t] {
					seen[t] = true
					out = append(out, t)
				}
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

func (s *EndpointSliceSource) scrape(ctx context.Context, target string) ([]*dto.MetricFamily, error) {
	client := s.HTTP
	if client == nil {
		client = &http.Client{Timeout: scrapeTimeout}
	}
	u := "http://" + target + "/metrics"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", u, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(io.LimitReader(resp.Body, scrapeBodyBytes))
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", u, err)
	}
	out := make([]*dto.MetricFamily, 0, len(fams))
	for _, mf := range fams {
		out = append(out, mf)
	}
	return out, nil
}

// PrometheusSource asks a Prometheus that scrapes every router replica
// (config/monitoring) for each replica's counters, by instance. The
// queries are in docs/flags-and-rollouts.md ("Analysis across replicas").
type PrometheusSource struct {
	URL  string       // the Prometheus base URL, e.g. http://prometheus:9090
	HTTP *http.Client // nil: a client with scrapeTimeout
}

// promQueries are the instant queries the analysis sends, each by
// instance (one router replica), for one revision: requests, 5xx answers,
// the latency histogram's cumulative buckets, and the shadow comparisons
// and labelled outcomes by series (written down in
// docs/flags-and-rollouts.md).
func promQueries(function, revision string) (requests, errors, buckets, judged string) {
	sel := fmt.Sprintf(`function=%q,revision=%q`, function, revision)
	names := strings.Join([]string{shadowRequestsMetric, shadowAgreedMetric, shadowDeltaMetric + "_sum", labelledMetric, confusionMetric, logLossMetric, hitsMetric}, "|")
	return fmt.Sprintf(`sum by (instance) (%s{%s})`, requestsMetric, sel),
		fmt.Sprintf(`sum by (instance) (%s{%s,code=~"5.."})`, requestsMetric, sel),
		fmt.Sprintf(`sum by (instance, le) (%s_bucket{%s})`, durationMetric, sel),
		fmt.Sprintf(`sum by (instance, __name__, result, cell) ({__name__=~%q,%s})`, names, sel)
}

func (p *PrometheusSource) sample(ctx context.Context, function, revision string) (fleetSample, error) {
	qr, qe, qb, qj := promQueries(function, revision)
	out := fleetSample{source: SourcePrometheus, replicas: map[string]sample{}}
	for _, q := range []struct {
		expr string
		set  func(*sample, promValue) error
	}{
		{qr, func(s *sample, v promValue) error { s.requests = v.value; return nil }},
		{qe, func(s *sample, v promValue) error { s.errors = v.value; return nil }},
		{qb, func(s *sample, v promValue) error {
			le, err := strconv.ParseFloat(v.le, 64)
			if err != nil {
				return fmt.Errorf("prometheus %s: bucket le %q: %w", p.URL, v.le, err)
			}
			s.buckets[le] = v.value
			return nil
		}},
		{qj, func(s *sample, v promValue) error {
			if strings.HasPrefix(v.name, "pilotlight_shadow_") {
				s.addShadow(v.name, v.result, v.value)
			} else {
				s.addOutcome(v.name, v.cell, v.value)
			}
			return nil
		}},
	} {
		vals, err := p.query(ctx, q.expr)
		if err != nil {
			return out, err
		}
		for _, v := range vals {
			s, ok := out.replicas[v.instance]
			if !ok {
				s = sample{buckets: map[float64]float64{}}
			}
			if err := q.set(&s, v); err != nil {
				return out, err
			}
			out.replicas[v.instance] = s
		}
	}
	out.listed = len(out.replicas)
	return out, nil
}

type promValue struct {
	instance, le       string
	name, result, cell string // the judged query's series
	value              float64
}

// query runs one instant query through the HTTP API (/api/v1/query).
func (p *PrometheusSource) query(ctx context.Context, q string) ([]promValue, error) {
	client := p.HTTP
	if client == nil {
		client = &http.Client{Timeout: scrapeTimeout}
	}
	u := strings.TrimSuffix(p.URL, "/") + "/api/v1/query?" + url.Values{"query": {q}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("prometheus %s: %w (check --prometheus-url)", p.URL, err)
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, scrapeBodyBytes)).Decode(&body); err != nil {
		return nil, fmt.Errorf("prometheus %s: %s: answer does not decode: %w", p.URL, resp.Status, err)
	}
	if body.Status != "success" {
		return nil, fmt.Errorf("prometheus %s: query %s: %s", p.URL, q, body.Error)
	}
	out := make([]promValue, 0, len(body.Data.Result))
	for _, r := range body.Data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil || math.IsNaN(v) {
			continue
		}
		m := r.Metric
		out = append(out, promValue{instance: m["instance"], le: m["le"], name: m["__name__"], result: m["result"], cell: m["cell"], value: v})
	}
	return out, nil
}

// fleet says whether the analysis reads every router replica (an
// EndpointSlice or Prometheus source), not this process alone.
func (c *Controller) fleet() bool {
	_, local := c.traffic.(GathererSource)
	return !local
}

// trafficName says which source the analysis reads, for error messages.
func (c *Controller) trafficName() string {
	switch t := c.traffic.(type) {
	case *EndpointSliceSource:
		return fmt.Sprintf("%s: Service %s/%s", SourceEndpointSlice, t.Namespace, t.Service)
	case *PrometheusSource:
		return fmt.Sprintf("%s: %s", SourcePrometheus, t.URL)
	}
	return SourceLocal
}
