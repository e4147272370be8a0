package knative_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"knative.dev/serving/pkg/client/clientset/versioned/fake"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/testbin"
	"github.com/pilotlight/pilotlight/knative"
	"github.com/pilotlight/pilotlight/router"
)

// TestKnativeBackendReachesRevisionServices: with --knative-via=service a
// request goes to the revision's own Service address, naming the revision
// in the headers Knative's activator reads, whatever the client sent.
func TestKnativeBackendReachesRevisionServices(t *testing.T) {
	// What answers at a revision Service's address: Knative's activator
	// (at zero) or queue-proxy; it echoes the revision it was told.
	activator := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Header.Get("Knative-Serving-Namespace")+"/"+r.Header.Get("Knative-Serving-Revision")+" "+r.URL.Path)
	}))
	defer activator.Close()
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(activator.URL, "http://"))
	p, _ := strconv.Atoi(port)
	var svcs []*corev1.Service
	for _, rev := range []string{"fraud-00001", "fraud-00002"} {
		svcs = append(svcs, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: rev, Namespace: "pilotlight"},
			Spec: corev1.ServiceSpec{ClusterIP: "127.0.0.1", Ports: []corev1.ServicePort{{Name: "http2", Port: int32(p)}}}})
	}
	kube := kubefake.NewSimpleClientset(svcs[0], svcs[1])
	m, err := functions.LoadDir(filepath.Join(testbin.Root(), "functions", "fraud"))
	if err != nil {
		t.Fatal(err)
	}
	backend := knative.Backend{Resolver: knative.NewResolver(fake.NewSimpleClientset().ServingV1(), "pilotlight", time.Minute),
		Services: knative.NewRevisionServices(kube.CoreV1(), "pilotlight", time.Minute)}
	rt, err := router.New(router.Config{Functions: []*functions.Manifest{m}, Backend: backend, Picker: headerPicker{}, Logger: testbin.QuietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(rt.Handler())
	defer front.Close()
	for _, c := range []struct{ want, path, forged, body string }{
		{"fraud-00001", "/functions/fraud", "", "pilotlight/fraud-00001 /"},
		{"fraud-00002", "/functions/fraud", "fraud-00001", "pilotlight/fraud-00002 /"},
		{"fraud-00002", "/v2/models/fraud/infer", "other", "pilotlight/fraud-00002 /v2/models/fraud/infer"},
	} {
		req, _ := http.NewRequestWithContext(context.Background(), "POST", front.URL+c.path, strings.NewReader(`{"amount":1}`))
		req.Header.Set("X-Want-Revision", c.want)
		if c.forged != "" {
			req.Header.Set("Knative-Serving-Revision", c.forged)
			req.Header.Set("Knative-Serving-Namespace", "elsewhere")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != c.body || resp.Header.Get("X-Pilotlight-Revision") != c.want {
			t.Errorf("%s %s (client said %q): %d %q %q; want %q", c.path, c.want, c.forged, resp.StatusCode, body, resp.Header.Get("X-Pilotlight-Revision"), c.body)
		}
	}
	// A revision whose Service Knative has not made is a 503 that says what to do.
	if err := kube.CoreV1().Services("pilotlight").Delete(context.Background(), "fraud-00001", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	backend.Services.Invalidate("fraud-00001")
	req, _ := http.NewRequest("POST", front.URL+"/functions/fraud", strings.NewReader(`{}`))
	req.Header.Set("X-Want-Revision", "fraud-00001")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(body), "pilotlight deploy fraud") || !strings.Contains(string(body), `"error"`) {
		t.Errorf("revision without a Service: %d %s", resp.StatusCode, body)
	}
}
