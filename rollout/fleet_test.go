package rollout

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/testbin"
)

// replica is one router replica's /metrics, served over real HTTP on
// 127.0.0.1 as the admin listener serves it (promhttp, OpenMetrics on).
type replica struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	shadow   *prometheus.CounterVec // the Shadower's series
	agreed   *prometheus.CounterVec
	srv      *httptest.Server
	handler  atomic.Pointer[http.Handler] // swapped to restart the replica
}

func newReplica(t *testing.T) *replica {
	t.Helper()
	r := &replica{reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: requestsMetric}, []string{"function", "revision", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: durationMetric, Buckets: []float64{.001, .01, .1, 1}}, []string{"function", "revision"})}
	r.shadow = prometheus.NewCounterVec(prometheus.CounterOpts{Name: shadowRequestsMetric}, []string{"function", "revision", "result"})
	r.agreed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: shadowAgreedMetric}, []string{"function", "revision"})
	r.reg.MustRegister(r.requests, r.duration, r.shadow, r.agreed)
	var h http.Handler = promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{EnableOpenMetrics: true})
	r.handler.Store(&h)
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/metrics" {
			http.NotFound(w, req)
			return
		}
		(*r.handler.Load()).ServeHTTP(w, req)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *replica) serve(revision string, ok, fail int, latency time.Duration) {
	for range ok {
		r.requests.WithLabelValues("fraud", revision, "200").Inc()
		r.duration.WithLabelValues("fraud", revision).Observe(latency.Seconds())
	}
	for range fail {
		r.requests.WithLabelValues("fraud", revision, "503").Inc()
		r.duration.WithLabelValues("fraud", revision).Observe(latency.Seconds())
	}
}

// compare counts n shadow comparisons agreeing at rate agreement.
func (r *replica) compare(revision string, n int, agreement float64) {
	r.shadow.WithLabelValues("fraud", revision, ShadowCompared).Add(float64(n))
	r.agreed.WithLabelValues("fraud", revision).Add(float64(n) * agreement)
}

func (r *replica) hostPort(t *testing.T) (string, int32) {
	t.Helper()
	h, p, err := net.SplitHostPort(r.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return h, int32(n)
}

// slice is an EndpointSlice of the router Service as the endpoints
// controller writes it: one port (named admin), the given addresses.
func slice(name string, port int32, ready bool, addrs ...string) *discoveryv1.EndpointSlice {
	portName := AdminPortName
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "pilotlight", Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: "pilotlight-router"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Port: &port}},
	}
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
	}
	return s
}

// liveFleet is two replicas listed in the router Service's EndpointSlices,
// with tick run on both every 10 ms (live traffic) until the test ends;
// it returns the first (the driving replica) and the source reading both.
func liveFleet(t *testing.T, tick func(a, b *replica)) (*replica, *EndpointSliceSource) {
	t.Helper()
	a, b := newReplica(t), newReplica(t)
	ha, pa := a.hostPort(t)
	hb, pb := b.hostPort(t)
	cs := fake.NewSimpleClientset(slice("router-a", pa, true, ha), slice("router-b", pb, true, hb))
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
				tick(a, b)
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return a, &EndpointSliceSource{Client: cs, Namespace: "pilotlight", Service: "pilotlight-router"}
}

func TestEndpointSliceSourceReadsEveryReadyReplica(t *testing.T) {
	a, b := newReplica(t), newReplica(t)
	ha, pa := a.hostPort(t)
	hb, pb := b.hostPort(t)
	dead := testbin.FreePort(t) // listed and ready, but nothing answers
	deadPort, _ := strconv.Atoi(dead)
	notReadyPort := int32(1) // not ready: never scraped
	other := slice("other-service", pa, true, ha)
	other.Labels[discoveryv1.LabelServiceName] = "something-else"
	cs := fake.NewSimpleClientset(slice("router-a", pa, true, ha), slice("router-b", pb, true, hb),
		slice("router-dead", int32(deadPort), true, "127.0.0.1"), slice("router-unready", notReadyPort, false, "127.0.0.1"), other)
	src := &EndpointSliceSource{Client: cs, Namespace: "pilotlight", Service: "pilotlight-router"}
	ctx := context.Background()

	a.serve("fraud-00002", 5, 0, time.Millisecond)
	before, err := src.sample(ctx, "fraud", "fraud-00002")
	if err != nil {
		t.Fatal(err)
	}
	a.serve("fraud-00002", 30, 0, time.Millisecond)
	b.serve("fraud-00002", 60, 10, 500*time.Millisecond) // the errors and the slow answers are all on b
	b.serve("fraud-00001", 1000, 1000, time.Millisecond) // another revision: not the candidate's
	after, err := src.sample(ctx, "fraud", "fraud-00002")
	if err != nil {
		t.Fatal(err)
	}
	w := between(before, after)
	if w.Source != SourceEndpointSlice || w.Replicas != 2 || w.Listed != 3 {
		t.Errorf("source %s, %d of %d replicas: want endpointslice, 2 of 3 (the dead one listed, the unready one and the other Service's not)", w.Source, w.Replicas, w.Listed)
	}
	if w.Requests != 100 || w.Errors != 10 {
		t.Errorf("window %+v: want 100 requests and 10 errors over both replicas", w)
	}
	if w.P99 < 100*time.Millisecond {
		t.Errorf("p99 %s: want b's slow answers in it (above 100 ms)", w.P99)
	}

	// A replica restarted between the samples counts from zero, as
	// PromQL's increase() reads a reset.
	b2 := newReplica(t)
	b2.serve("fraud-00002", 7, 0, time.Millisecond)
	b.handler.Store(b2.handler.Load())
	restarted, err := src.sample(ctx, "fraud", "fraud-00002")
	if err != nil {
		t.Fatal(err)
	}
	if w := between(after, restarted); w.Requests != 7 {
		t.Errorf("after b restarted: %v requests, want 7 (b's since its restart, a's none)", w.Requests)
	}

	empty := &EndpointSliceSource{Client: fake.NewSimpleClientset(), Namespace: "pilotlight", Service: "pilotlight-router"}
	if _, err := empty.sample(ctx, "fraud", "fraud-00002"); err == nil || !strings.Contains(err.Error(), "no ready endpoints") {
		t.Errorf("no slices: %v, want an error naming the missing endpoints", err)
	}
}

// The rollout judges the errors one replica saw although this process's
// own registry (the other replica) saw none: without the fleet source
// it would promote.
func TestCanaryJudgesEveryReplicasTraffic(t *testing.T) {
	for _, tc := range []struct {
		name      string
		failOnB   int
		wantState string
	}{{"healthy on both", 0, StatePromoted}, {"failing on the other replica", 20, StateRolledBack}} {
		t.Run(tc.name, func(t *testing.T) {
			a, src := liveFleet(t, func(a, b *replica) {
				a.serve("fraud-00002", 10, 0, time.Millisecond)
				b.serve("fraud-00002", 10, tc.failOnB, time.Millisecond)
			})
			path := writeFlags(t, flagsDoc)
			c := New(Config{FlagsPath: path, Functions: []*functions.Manifest{fraudFn()}, Gatherer: a.reg, Registerer: prometheus.NewRegistry(),
				Logger: slog.New(slog.DiscardHandler), Traffic: src})
			t.Cleanup(c.Close)
			if _, err := c.Start(Spec{Function: "fraud", To: "fraud-00002", Steps: []int{50, 100}, Interval: 200 * time.Millisecond, MinRequests: 10, MaxErrorRate: 0.05}); err != nil {
				t.Fatal(err)
			}
			r := &rig{c: c, path: path}
			st := r.wait(t)
			if st.State != tc.wantState {
				t.Fatalf("state %s, want %s: %+v", st.State, tc.wantState, st.Decisions)
			}
			last := st.Decisions[len(st.Decisions)-1]
			if last.Source != SourceEndpointSlice || last.Replicas != 2 || last.ReplicasListed != 2 ||
				!strings.Contains(last.Reason, "traffic from endpointslice: 2 of 2 router replicas") {
				t.Errorf("decision %+v: want it to name the endpointslice source and 2 of 2 replicas", last)
			}
			if tc.wantState == StateRolledBack && last.Check != CheckErrorRate {
				t.Errorf("rolled back on %s, want error_rate", last.Check)
			}
		})
	}
}

// The agreement gate judges the comparisons every replica made: the
// driving replica's own shadower compares nothing (fakeShadow with no
// answers), the other replica's disagree, and the rollout rolls back on
// agreement; when they agree, it promotes.
func TestShadowGateJudgesEveryReplicasComparisons(t *testing.T) {
	for _, tc := range []struct {
		name      string
		agreement float64
		wantState string
	}{{"agreeing on the other replica", 1, StatePromoted}, {"disagreeing on the other replica", 0.3, StateRolledBack}} {
		t.Run(tc.name, func(t *testing.T) {
			a, src := liveFleet(t, func(a, b *replica) {
				a.serve("fraud-00002", 10, 0, time.Millisecond)
				b.serve("fraud-00002", 10, 0, time.Millisecond)
				b.compare("fraud-00002", 10, tc.agreement)
			})
			path := writeFlags(t, flagsDoc)
			own := &fakeShadow{}
			c := New(Config{FlagsPath: path, Functions: []*functions.Manifest{fraudFn()}, Gatherer: a.reg, Registerer: prometheus.NewRegistry(),
				Logger: slog.New(slog.DiscardHandler), Traffic: src, Shadow: own})
			t.Cleanup(c.Close)
			if _, err := c.Start(Spec{Function: "fraud", To: "fraud-00002", Steps: []int{50, 100}, Interval: 200 * time.Millisecond, MinRequests: 10, MaxErrorRate: 0.05, MinAgreement: 0.9}); err != nil {
				t.Fatal(err)
			}
			st := (&rig{c: c, path: path}).wait(t)
			last := st.Decisions[len(st.Decisions)-1]
			if st.State != tc.wantState {
				t.Fatalf("state %s, want %s: %+v", st.State, tc.wantState, st.Decisions)
			}
			if tc.wantState == StateRolledBack && last.Check != CheckAgreement {
				t.Errorf("rolled back on %s, want agreement", last.Check)
			}
			if last.Compared < 10 || own.totals.Compared != 0 {
				t.Errorf("judged %v comparisons (own shadower: %v); want the other replica's", last.Compared, own.totals.Compared)
			}
		})
	}
}

// A replica that is not driving a rollout mirrors what its record asks,
// and stops when the record ends; the driving replica is left to its
// driver.
func TestFollowRecordsMirrorsOnEveryReplica(t *testing.T) {
	sh := &fakeShadow{}
	c := New(Config{FlagsPath: writeFlags(t, flagsDoc), Functions: []*functions.Manifest{fraudFn()}, Registerer: prometheus.NewRegistry(), Logger: slog.New(slog.DiscardHandler), Shadow: sh})
	t.Cleanup(c.Close)
	c.FollowRecords(map[string]RolloutRecord{"fraud": {From: "fraud-00001", To: "fraud-00002", State: StateRunning, Shadow: 20}})
	c.FollowRecords(map[string]RolloutRecord{"fraud": {From: "fraud-00001", To: "fraud-00002", State: StatePromoted}})
	if got := strings.Join(sh.mirrors, ","); got != "fraud-00001->fraud-00002,stop" {
		t.Fatalf("mirrors %q, want the record's copy then a stop", got)
	}
}

// TestPrometheusSourceAgainstRealPrometheus scrapes two replicas with
// Debian's Prometheus and requires the Prometheus source to see the same
// window the replicas' own /metrics show.
func TestPrometheusSourceAgainstRealPrometheus(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the live Prometheus test waits for scrapes (about 5 s)")
	}
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("prometheus is not installed (hack/deps/monitoring.apt installs it)")
	}
	a, b := newReplica(t), newReplica(t)
	dir := t.TempDir()
	cfg := fmt.Sprintf("global:\n  scrape_interval: 500ms\nscrape_configs:\n  - job_name: router\n    static_configs:\n      - targets: [%q, %q]\n",
		a.srv.Listener.Addr().String(), b.srv.Listener.Addr().String())
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := testbin.FreeAddr(t)
	prom := exec.Command(promBin, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "tsdb"), "--web.listen-address="+addr)
	testbin.StartDaemon(t, prom, "http://"+addr+"/-/ready", time.Minute, "hack/deps/monitoring.apt installs it")
	src := &PrometheusSource{URL: "http://" + addr}
	ctx := context.Background()

	// scraped waits until Prometheus's latest scrape of both replicas
	// shows want requests of the candidate in all.
	scraped := func(want float64) fleetSample {
		t.Helper()
		var s fleetSample
		testbin.Poll(t, fmt.Sprintf("Prometheus to scrape %v candidate requests", want), 30*time.Second, 100*time.Millisecond, func() bool {
			var err error
			if s, err = src.sample(ctx, "fraud", "fraud-00002"); err != nil {
				t.Logf("sample: %v", err)
				return false
			}
			total := 0.0
			for _, r := range s.replicas {
				total += r.requests
			}
			if total != want || len(s.replicas) != 2 {
				t.Logf("Prometheus shows %v requests over %d replicas so far", total, len(s.replicas))
				return false
			}
			return true
		})
		return s
	}
	a.serve("fraud-00002", 5, 0, time.Millisecond)
	b.serve("fraud-00002", 5, 0, time.Millisecond)
	before := scraped(10)
	a.serve("fraud-00002", 40, 0, time.Millisecond)
	b.serve("fraud-00002", 45, 10, 500*time.Millisecond)
	a.compare("fraud-00002", 4, 1)
	b.compare("fraud-00002", 6, 0.5)
	after := scraped(105)
	w := between(before, after)
	if w.Source != SourcePrometheus || w.Replicas != 2 {
		t.Errorf("source %s, %d replicas: want prometheus, 2", w.Source, w.Replicas)
	}
	if w.Requests != 95 || w.Errors != 10 {
		t.Errorf("window %+v: want 95 requests, 10 errors", w)
	}
	if w.P99 < 100*time.Millisecond {
		t.Errorf("p99 %s: want b's slow answers in it", w.P99)
	}
	if w.Shadow.Compared != 10 || w.Shadow.Agreed != 7 {
		t.Errorf("shadow %+v: want both replicas' 10 comparisons, 7 agreeing (the judged query)", w.Shadow)
	}
}
