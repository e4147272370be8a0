package agent

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/pilotlight/pilotlight/bpf"
	"github.com/pilotlight/pilotlight/internal/testbin"
)

// TestReaderGathersTheAgents reads two ready agents' /timelines through
// their Service's EndpointSlice (a third, not ready, is not asked): of one
// revision's two timelines the later wins. Tests listen on 127.0.0.1 only,
// so the two "nodes" are one listener that answers as each in turn.
func TestReaderGathersTheAgents(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 16, 0, 0, 0, time.UTC)
	answers := []map[string]bpf.Timeline{
		{"fraud/fraud-00002": {PID: 1, Function: "fraud", Revision: "fraud-00002", Events: []bpf.TimelineEvent{{Name: "first_write", Time: t0}}}},
		{"fraud/fraud-00002": {PID: 2, Function: "fraud", Revision: "fraud-00002", Events: []bpf.TimelineEvent{{Name: "first_write", Time: t0.Add(time.Second)}}},
			"recommend/recommend-00001": {PID: 3, Function: "recommend", Revision: "recommend-00001"}},
	}
	var mu sync.Mutex
	asked := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/timelines" {
			http.NotFound(w, r)
			return
		}
		mu.Lock()
		a := answers[asked%len(answers)]
		asked++
		mu.Unlock()
		_ = json.NewEncoder(w).Encode(a)
	}))
	defer srv.Close()
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	client := fake.NewSimpleClientset(&discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "agents-x", Namespace: "pilotlight-system", Labels: map[string]string{discoveryv1.LabelServiceName: "pilotlight-bpf-agent"}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"127.0.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}},
			{Addresses: []string{"127.0.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}},
			{Addresses: []string{"192.0.2.1"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}}, // never dialled
		},
	})
	r := &Reader{Client: client, Namespace: "pilotlight-system", Service: "pilotlight-bpf-agent", Port: int32(port)}
	if err := r.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := r.Latest()
	if asked != 2 || len(got) != 2 || got["fraud/fraud-00002"].PID != 2 || got["recommend/recommend-00001"].PID != 3 {
		t.Fatalf("asked %d agents; Latest = %+v, want 2 asked, fraud from the second agent (later) and recommend", asked, got)
	}
}

// TestReaderSaysWhyItCannotRead: a router the API refuses (no RBAC for
// EndpointSlices) logs the refusal once, not every tick, and its recovery.
func TestReaderSaysWhyItCannotRead(t *testing.T) {
	client := fake.NewSimpleClientset()
	var refuse atomic.Bool
	refuse.Store(true)
	client.PrependReactor("list", "endpointslices", func(k8stesting.Action) (bool, runtime.Object, error) {
		if refuse.Load() {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "discovery.k8s.io", Resource: "endpointslices"}, "", errors.New("RBAC: access denied"))
		}
		return false, nil, nil
	})
	var logs testbin.SyncBuffer
	r := &Reader{Client: client, Namespace: "pilotlight-system", Service: "pilotlight-bpf-agent", Log: slog.New(slog.NewTextHandler(&logs, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx, 5*time.Millisecond); close(done) }()
	time.Sleep(100 * time.Millisecond)
	refuse.Store(false)
	time.Sleep(100 * time.Millisecond)
	cancel()
	<-done
	out := logs.String()
	if n := strings.Count(out, "cannot read the eBPF agents"); n != 1 || !strings.Contains(out, "forbidden") {
		t.Fatalf("%d warnings over ~20 refused ticks, want 1 naming the refusal:\n%s", n, out)
	}
	if !strings.Contains(out, "reads the eBPF agents' cold starts again") {
		t.Fatalf("no line for the recovery:\n%s", out)
	}
}
