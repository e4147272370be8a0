package knative_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"knative.dev/pkg/apis"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"knative.dev/serving/pkg/client/clientset/versioned/fake"

	"github.com/pilotlight/pilotlight/functions"
	_ "github.com/pilotlight/pilotlight/functions/all"
	"github.com/pilotlight/pilotlight/internal/testbin"
	"github.com/pilotlight/pilotlight/knative"
	"github.com/pilotlight/pilotlight/router"
)

// headerPicker routes by the X-Want-Revision header, standing in for a flag.
type headerPicker struct{}

func (headerPicker) Pick(_ context.Context, fn *functions.Manifest, r router.RequestView, _ []byte) (string, error) {
	return r.Header("X-Want-Revision"), nil
}
func (headerPicker) Weights(*functions.Manifest) map[string]int { return nil }

func TestKnativeBackendProxiesToTagURLs(t *testing.T) {
	pods := map[string]*httptest.Server{}
	for _, rev := range []string{"fraud-00001", "fraud-00002"} {
		rev := rev
		pods[rev] = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			io.WriteString(w, rev+" "+r.URL.Path+" "+string(body))
		}))
		defer pods[rev].Close()
	}
	tagURL := func(s string) *apis.URL { u, _ := apis.ParseURL(s); return u }
	svc := &servingv1.Service{ObjectMeta: metav1.ObjectMeta{Name: "fraud", Namespace: "pilotlight"}}
	svc.Status.Traffic = []servingv1.TrafficTarget{
		{RevisionName: "fraud-00001", Tag: "stable", URL: tagURL(pods["fraud-00001"].URL)},
		{RevisionName: "fraud-00002", Tag: "canary", URL: tagURL(pods["fraud-00002"].URL)},
	}
	cs := fake.NewSimpleClientset(svc)
	m, err := functions.LoadDir(filepath.Join(testbin.Root(), "functions", "fraud"))
	if err != nil {
		t.Fatal(err)
	}
	rt, err := router.New(router.Config{Functions: []*functions.Manifest{m}, Backend: knative.Backend{Resolver: knative.NewResolver(cs.ServingV1(), "pilotlight", time.Minute)},
		Picker: headerPicker{}, Logger: testbin.QuietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(rt.Handler())
	defer front.Close()
	for _, rev := range []string{"fraud-00001", "fraud-00002"} {
		req, _ := http.NewRequestWithContext(context.Background(), "POST", front.URL+"/functions/fraud", strings.NewReader(`{"amount":1}`))
		req.Header.Set("X-Want-Revision", rev)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		// The function call reaches the revision's pods at POST /, as Knative invokes a function.
		if resp.StatusCode != 200 || string(body) != rev+` / {"amount":1}` || resp.Header.Get("X-Pilotlight-Revision") != rev {
			t.Errorf("%s: %d %q %q", rev, resp.StatusCode, body, resp.Header.Get("X-Pilotlight-Revision"))
		}
	}
	// A revision Knative has no URL for is a 503 that says what to do.
	req, _ := http.NewRequest("POST", front.URL+"/v2/models/fraud/versions/fraud-00002/infer", strings.NewReader(`{}`))
	cs2 := fake.NewSimpleClientset()
	rt2, _ := router.New(router.Config{Functions: []*functions.Manifest{m}, Backend: knative.Backend{Resolver: knative.NewResolver(cs2.ServingV1(), "pilotlight", time.Minute)}, Logger: testbin.QuietLogger()})
	front2 := httptest.NewServer(rt2.Handler())
	defer front2.Close()
	req.URL.Host = strings.TrimPrefix(front2.URL, "http://")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(body), "fraud") {
		t.Errorf("undeployed function: %d %s", resp.StatusCode, body)
	}
}
