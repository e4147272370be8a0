package agent

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"

	"github.com/pilotlight/pilotlight/bpf"
)

// TestReaderGathersTheAgents reads two ready agents' /timelines through
// their Service's EndpointSlice (a third, not ready, is not asked): of one
// revision's two timelines the later wins.
func TestReaderGathersTheAgents(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 16, 0, 0, 0, time.UTC)
	answers := map[string]map[string]bpf.Timeline{
		"127.0.0.1": {"fraud/fraud-00002": {PID: 1, Function: "fraud", Revision: "fraud-00002", Events: []bpf.TimelineEvent{{Name: "first_write", Time: t0}}}},
		"127.0.0.2": {"fraud/fraud-00002": {PID: 2, Function: "fraud", Revision: "fraud-00002", Events: []bpf.TimelineEvent{{Name: "first_write", Time: t0.Add(time.Second)}}},
			"recommend/recommend-00001": {PID: 3, Function: "recommend", Revision: "recommend-00001"}},
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.Host)
		if r.URL.Path != "/timelines" {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(answers[host])
	})
	// Two agents on one port, as on two nodes: 127.0.0.1 and 127.0.0.2.
	ln1, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln1.Addr().(*net.TCPAddr).Port
	ln2, err := net.Listen("tcp", "127.0.0.2:"+strconv.Itoa(port))
	if err != nil {
		ln1.Close()
		t.Skipf("no second loopback address on this machine: %v", err)
	}
	for _, ln := range []net.Listener{ln1, ln2} {
		srv := httptest.NewUnstartedServer(h)
		srv.Listener = ln
		srv.Start()
		defer srv.Close()
	}
	client := fake.NewSimpleClientset(&discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "agents-x", Namespace: "pilotlight-system", Labels: map[string]string{discoveryv1.LabelServiceName: "pilotlight-bpf-agent"}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"127.0.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}},
			{Addresses: []string{"127.0.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}},
			{Addresses: []string{"127.0.0.3"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}},
		},
	})
	r := &Reader{Client: client, Namespace: "pilotlight-system", Service: "pilotlight-bpf-agent", Port: int32(port)}
	if err := r.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := r.Latest()
	if len(got) != 2 || got["fraud/fraud-00002"].PID != 2 || got["recommend/recommend-00001"].PID != 3 {
		t.Fatalf("Latest = %+v, want fraud from the second agent (later) and recommend", got)
	}
}
