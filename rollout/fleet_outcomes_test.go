package rollout_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/pilotlight/pilotlight/flags"
	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/testbin"
	"github.com/pilotlight/pilotlight/rollout"
	"github.com/pilotlight/pilotlight/router"
	"github.com/pilotlight/pilotlight/router/auth"
)

// Two router replicas in one process, each a real router with its own
// registry and outcome store, serving its data port and its /metrics over
// real HTTP on 127.0.0.1, listed in the router Service's EndpointSlices
// (a fake clientset: one slice per replica, since both share an address
// and differ by port).
const (
	fleetNamespace = "pilotlight"
	fleetService   = "pilotlight-router"
)

type outcomeReplica struct {
	name    string
	reg     *prometheus.Registry
	watcher *flags.Watcher
	store   *rollout.Outcomes
	data    *httptest.Server
	metrics *httptest.Server
}

func fleetFraud() *functions.Manifest {
	return &functions.Manifest{Name: "fraud", Handler: "fraud", Flag: "fraud-revision",
		Revisions: []functions.Revision{{Name: "fraud-00001", Tag: "stable"}, {Name: "fraud-00002"}},
		Runtime:   functions.Runtime{MaxBodyBytes: 1 << 20},
		Outcomes:  functions.Outcomes{MaxPredictions: 10_000, Window: time.Hour, Threshold: 0.5}}
}

// fleetSetup is what two replicas share: the flag file, fraud recording
// predictions, the API keys (and one for every function), the API.
func fleetSetup(t *testing.T) (string, []*functions.Manifest, *auth.Keys, string, *fake.Clientset) {
	flagsPath := filepath.Join(t.TempDir(), "flags.json")
	if err := os.WriteFile(flagsPath, []byte(fraudFlags), 0o644); err != nil {
		t.Fatal(err)
	}
	keys, key, _ := testKeys(t)
	return flagsPath, []*functions.Manifest{fleetFraud()}, keys, key, fake.NewSimpleClientset()
}

// newOutcomeReplica starts one replica. Its data listener is opened
// first, so its EndpointSlice can be written before its outcome store
// (which finds its peers through the slices) exists.
func newOutcomeReplica(t testing.TB, name string, fns []*functions.Manifest, flagsPath string, backend router.Backend, keys *auth.Keys, kube kubernetes.Interface) *outcomeReplica {
	t.Helper()
	r := &outcomeReplica{name: name, reg: prometheus.NewRegistry()}
	var err error
	if r.watcher, err = flags.NewWatcher(flags.WatcherConfig{Path: flagsPath, Logger: testbin.QuietLogger()}); err != nil {
		t.Fatal(err)
	}
	picker, err := router.NewFlagPicker(r.watcher, flagsPath, r.reg)
	if err != nil {
		t.Fatal(err)
	}
	peers := &rollout.OutcomePeers{Client: kube, Namespace: fleetNamespace, Service: fleetService, Self: name}
	if r.store, err = rollout.NewOutcomes(rollout.OutcomesConfig{Functions: fns, Registerer: r.reg, Logger: testbin.QuietLogger(), Peers: peers}); err != nil {
		t.Fatal(err)
	}
	rt, err := router.New(router.Config{Functions: fns, Backend: backend, Picker: picker, Recorder: r.store, Keys: keys, Registry: r.reg, Logger: testbin.QuietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Close)
	rollout.MountOutcomes(rt, fns, r.store)
	r.data = httptest.NewServer(rt.Handler())
	t.Cleanup(r.data.Close)
	r.metrics = httptest.NewServer(promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{}))
	t.Cleanup(r.metrics.Close)
	portOf := func(s *httptest.Server) int32 {
		_, p, _ := net.SplitHostPort(s.Listener.Addr().String())
		n, _ := strconv.Atoi(p)
		return int32(n)
	}
	admin, data := rollout.AdminPortName, rollout.DataPortName
	ap, dp := portOf(r.metrics), portOf(r.data)
	ready := true
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: fleetNamespace, Name: fleetService + "-" + name, Labels: map[string]string{discoveryv1.LabelServiceName: fleetService}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &admin, Port: &ap}, {Name: &data, Port: &dp}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"127.0.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: fleetNamespace, Name: name}}},
	}
	if _, err := kube.DiscoveryV1().EndpointSlices(fleetNamespace).Create(t.Context(), slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return r
}

// postOutcomes posts a batch to a replica with key and returns its answer.
func postOutcomes(t *testing.T, base, key string, batch []rollout.Outcome) (int, rollout.JoinResult, string) {
	body, _ := json.Marshal(map[string]any{"outcomes": batch})
	req, _ := http.NewRequest(http.MethodPost, base+"/v2/models/fraud/outcomes", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Error(err)
		return 0, rollout.JoinResult{}, ""
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var res rollout.JoinResult
	_ = json.Unmarshal(raw, &res)
	return resp.StatusCode, res, string(raw)
}

// TestOutcomeGateJudgesTheOtherReplicasPredictions: every prediction is
// served by replica b, every outcome is posted to replica a, which drives
// the rollout. a forwards each outcome to b, which holds its prediction;
// b exports what it joined and a's analysis sums it over the fleet. The
// worse candidate is rolled back on precision although a itself joined
// nothing; an equally good one promotes, so the gate is what decided.
func TestOutcomeGateJudgesTheOtherReplicasPredictions(t *testing.T) {
	for _, c := range []struct {
		name      string
		candidate func(int) float64
		state     string
		check     string
	}{
		{"worse on labels: rolled back", sloppy, rollout.StateRolledBack, rollout.CheckPrecision},
		{"as good: promoted", good, rollout.StatePromoted, rollout.CheckHealthy},
	} {
		t.Run(c.name, func(t *testing.T) {
			flagsPath, fns, keys, key, kube := fleetSetup(t)
			backend := revisionServers{"fraud-00001": model(t, good), "fraud-00002": model(t, c.candidate)}
			a := newOutcomeReplica(t, "router-a", fns, flagsPath, backend, keys, kube)
			b := newOutcomeReplica(t, "router-b", fns, flagsPath, backend, keys, kube)
			ctl := rollout.New(rollout.Config{FlagsPath: flagsPath, Functions: fns, Gatherer: a.reg, Registerer: a.reg, Logger: testbin.QuietLogger(),
				Reload:   func() { a.watcher.ReloadNow(); b.watcher.ReloadNow() },
				Outcomes: a.store, Traffic: &rollout.EndpointSliceSource{Client: kube, Namespace: fleetNamespace, Service: fleetService}})
			t.Cleanup(ctl.Close)

			// Every transaction served by b, every outcome posted to a.
			var forwarded atomic.Int64
			stop := labelledTraffic(t, b.data.URL, a.data.URL, key, func(res rollout.JoinResult) bool {
				forwarded.Add(int64(res.Forwarded))
				return res.Joined == 50 && res.Forwarded == 50
			})
			defer stop()

			if _, err := ctl.Start(rollout.Spec{Function: "fraud", To: "fraud-00002", Steps: []int{50, 100}, Interval: 400 * time.Millisecond,
				MinRequests: 5, MinPrecision: 0.8, MaxLogLossDelta: 0.2, MinLabelled: 30}); err != nil {
				t.Fatal(err)
			}
			var st rollout.Status
			testbin.WaitFor(t, "the rollout ends", 30*time.Second, func() bool {
				st, _ = ctl.Status("fraud")
				return st.State != rollout.StateRunning
			})
			last := st.Decisions[len(st.Decisions)-1]
			if st.State != c.state || last.Check != c.check {
				t.Fatalf("state %s, check %s (%s); want %s by %s", st.State, last.Check, last.Reason, c.state, c.check)
			}
			if last.Labelled < 30 {
				t.Fatalf("decided on %v labelled outcomes, fewer than min_labelled", last.Labelled)
			}
			if !strings.Contains(last.Reason, "traffic from endpointslice: 2 of 2 router replicas") {
				t.Errorf("reason %q does not say it read both replicas", last.Reason)
			}
			if own := a.store.Totals("fraud", "fraud-00002").Labelled + a.store.Totals("fraud", "fraud-00001").Labelled; own != 0 {
				t.Fatalf("the driving replica joined %v outcomes itself; the test needs every prediction on the other", own)
			}
			t.Logf("%s: %s (outcomes forwarded so far: %d)", st.State, last.Reason, forwarded.Load())
		})
	}
}

// TestForwardedOutcomesAreAllOrNothing: an outcome that does not fit the
// prediction the other replica holds (a label of 7 for a probability)
// fails the batch with an error naming its position, and nothing of the
// batch is joined on either replica; a peer refuses a forward without the
// client's key.
func TestForwardedOutcomesAreAllOrNothing(t *testing.T) {
	flagsPath, fns, keys, key, kube := fleetSetup(t)
	backend := revisionServers{"fraud-00001": model(t, good), "fraud-00002": model(t, good)}
	a := newOutcomeReplica(t, "router-a", fns, flagsPath, backend, keys, kube)
	b := newOutcomeReplica(t, "router-b", fns, flagsPath, backend, keys, kube)
	for i, base := range []string{a.data.URL, b.data.URL} {
		req, _ := http.NewRequest(http.MethodPost, base+"/functions/fraud", strings.NewReader(fmt.Sprintf(`{"card_id": "c-%d"}`, i)))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set(router.HeaderRequestID, fmt.Sprintf("on-%d", i))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	labelled := func() float64 {
		return a.store.Totals("fraud", "fraud-00001").Labelled + b.store.Totals("fraud", "fraud-00001").Labelled
	}
	bad := []rollout.Outcome{
		{TrackingEventName: "chargeback", Details: map[string]any{"predictionId": "on-0", "value": 1.0}},
		{TrackingEventName: "chargeback", Details: map[string]any{"predictionId": "on-1", "value": 7.0}},
	}
	code, _, raw := postOutcomes(t, a.data.URL, key, bad)
	if code != http.StatusBadRequest || !strings.Contains(raw, "outcomes[1]: details.value 7") {
		t.Fatalf("a label that does not fit the other replica's prediction: %d %s; want 400 naming outcomes[1]", code, raw)
	}
	if n := labelled(); n != 0 {
		t.Fatalf("%v outcomes joined after a refused batch; want none", n)
	}
	code, res, raw := postOutcomes(t, a.data.URL, key, bad[:1:1])
	if code != http.StatusOK || res.Joined != 1 || res.Forwarded != 0 {
		t.Fatalf("an outcome held here: %d %s", code, raw)
	}
	good := []rollout.Outcome{{TrackingEventName: "chargeback", Details: map[string]any{"predictionId": "on-1", "value": 0.0}},
		{TrackingEventName: "chargeback", Details: map[string]any{"predictionId": "never-made"}}}
	code, res, raw = postOutcomes(t, a.data.URL, key, good)
	if code != http.StatusOK || res.Joined != 1 || res.Forwarded != 1 || res.Unknown != 1 {
		t.Fatalf("one outcome held by the other replica, one by none: %d %s", code, raw)
	}
	// A forward is the client's request, checked again at the peer.
	body := `{"outcomes": [{"trackingEventName": "chargeback", "details": {"predictionId": "on-1"}}], "positions": [0]}`
	req, _ := http.NewRequest(http.MethodPost, b.data.URL+"/v2/models/fraud/outcomes", strings.NewReader(body))
	req.Header.Set(rollout.HeaderOutcomesForwarded, "router-a")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a forward without the client's key: %d, want 401", resp.StatusCode)
	}
}

// TestOnlyAReplicaForwards: a client that sends the forwarded header
// itself, with a good key, is refused unless it sends from the address of
// another ready replica named in the header; nothing is joined. On one
// router with no replicas the header is refused outright.
func TestOnlyAReplicaForwards(t *testing.T) {
	flagsPath, fns, keys, key, kube := fleetSetup(t)
	backend := revisionServers{"fraud-00001": model(t, good), "fraud-00002": model(t, good)}
	a := newOutcomeReplica(t, "router-a", fns, flagsPath, backend, keys, kube)
	b := newOutcomeReplica(t, "router-b", fns, flagsPath, backend, keys, kube)
	// router-c is ready in the Service but lives elsewhere: 127.0.0.1 is not its address.
	ready, port, name := true, int32(8080), rollout.DataPortName
	elsewhere := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: fleetNamespace, Name: fleetService + "-router-c", Labels: map[string]string{discoveryv1.LabelServiceName: fleetService}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.244.0.9"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: fleetNamespace, Name: "router-c"}}},
	}
	if _, err := kube.DiscoveryV1().EndpointSlices(fleetNamespace).Create(t.Context(), elsewhere, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, a.data.URL+"/functions/fraud", strings.NewReader(`{"card_id": "c-1"}`))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set(router.HeaderRequestID, "held-by-a")
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusOK {
		t.Fatalf("prediction: %d", resp.StatusCode)
	}
	forward := func(base, replica string) (int, string) {
		body := `{"outcomes": [{"trackingEventName": "chargeback", "details": {"predictionId": "held-by-a", "value": 1}}], "positions": [0]}`
		req, _ := http.NewRequest(http.MethodPost, base+"/v2/models/fraud/outcomes", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set(rollout.HeaderOutcomesForwarded, replica)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(raw)
	}
	for _, replica := range []string{"router-z", "router-c", "router-a"} { // unknown; another address; a's own name at a
		if code, raw := forward(a.data.URL, replica); code != http.StatusForbidden || !strings.Contains(raw, rollout.HeaderOutcomesForwarded) {
			t.Errorf("forwarded header naming %s, sent by a client: %d %s; want 403 naming the header", replica, code, raw)
		}
	}
	if n := a.store.Totals("fraud", "fraud-00001").Labelled + a.store.Totals("fraud", "fraud-00002").Labelled; n != 0 {
		t.Fatalf("%v outcomes joined from refused forwards; want none", n)
	}
	// From 127.0.0.1, router-b's address: what b's own forward looks like.
	if code, raw := forward(a.data.URL, b.name); code != http.StatusOK || !strings.Contains(raw, "statuses") {
		t.Fatalf("a forward from router-b's address: %d %s", code, raw)
	}

	single, err := rollout.NewOutcomes(rollout.OutcomesConfig{Functions: fns, Registerer: prometheus.NewRegistry(), Logger: testbin.QuietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	rt, err := router.New(router.Config{Functions: fns, Backend: backend, Recorder: single, Keys: keys, Registry: prometheus.NewRegistry(), Logger: testbin.QuietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Close)
	rollout.MountOutcomes(rt, fns, single)
	srv := httptest.NewServer(rt.Handler())
	t.Cleanup(srv.Close)
	if code, raw := forward(srv.URL, "router-b"); code != http.StatusForbidden || !strings.Contains(raw, "no replicas") {
		t.Fatalf("the forwarded header at a router with no replicas: %d %s; want 403", code, raw)
	}
}

// BenchmarkOutcomePostForwarded posts batches of 1,000 outcomes over
// loopback HTTP to a replica that holds none of their predictions: each
// batch is checked there, forwarded to the other replica (which holds all
// 100,000) in one request, and joined there. "held" posts the same batches
// to the replica that holds them, for the cost of the forward beside it.
// Run it with -benchtime 100x: one pass over the batches, so every join is
// a first.
func BenchmarkOutcomePostForwarded(b *testing.B) {
	for _, to := range []string{"held", "forwarded"} {
		b.Run(to, func(b *testing.B) {
			const window, batchSize = 100_000, 1000
			flagsPath := filepath.Join(b.TempDir(), "flags.json")
			if err := os.WriteFile(flagsPath, []byte(fraudFlags), 0o644); err != nil {
				b.Fatal(err)
			}
			fn := fleetFraud()
			fn.Outcomes.MaxPredictions = window
			fns := []*functions.Manifest{fn}
			kube := fake.NewSimpleClientset()
			a := newOutcomeReplica(b, "router-a", fns, flagsPath, revisionServers{}, nil, kube)
			holder := newOutcomeReplica(b, "router-b", fns, flagsPath, revisionServers{}, nil, kube)
			answer := []byte(`{"fraud_probability": 0.7, "decision": "review", "top_features": []}`)
			for i := range window {
				holder.store.Record(router.PredictionCall{Function: "fraud", Revision: "fraud-00001", RequestID: fmt.Sprintf("req-%d", i), Response: answer})
			}
			target := a.data.URL
			if to == "held" {
				target = holder.data.URL
			}
			bodies := make([][]byte, window/batchSize)
			for i := range bodies {
				batch := make([]rollout.Outcome, batchSize)
				for j := range batch {
					batch[j] = rollout.Outcome{TrackingEventName: "chargeback", Details: map[string]any{"predictionId": fmt.Sprintf("req-%d", i*batchSize+j), "value": float64(j % 2)}}
				}
				bodies[i], _ = json.Marshal(map[string]any{"outcomes": batch})
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				resp, err := http.Post(target+"/v2/models/fraud/outcomes", "application/json", bytes.NewReader(bodies[i%len(bodies)]))
				if err != nil {
					b.Fatal(err)
				}
				raw, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("%d %s", resp.StatusCode, raw)
				}
			}
			b.ReportMetric(float64(b.N*batchSize)/b.Elapsed().Seconds(), "outcomes/s")
		})
	}
}
