package knative

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"strings"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/flags"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// revisionServer stands in for the pods behind one tag URL.
func revisionServer(t *testing.T, revision string) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Pilotlight-Revision", revision)
		body, _ := io.ReadAll(r.Body)
		io.WriteString(w, revision+" got "+string(body))
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

func TestResolverProxiesToTagURL(t *testing.T) {
	stable := revisionServer(t, "fraud-00001")
	canary := revisionServer(t, "fraud-00002")
	c := newCluster(t)
	c.urlFor = func(tag string) string {
		switch tag {
		case "stable":
			return stable.URL
		case "canary":
			return canary.URL
		}
		return "http://fraud.pilotlight.svc.cluster.local"
	}
	m := fraudManifest(t)
	ctx := context.Background()
	d := deployer(c, nil)
	first := *m
	first.Revisions = m.Revisions[:1]
	if _, err := d.Deploy(ctx, &first, DeployOptions{Wait: true, Timeout: time.Second}); err != nil {
		t.Fatal(err)
	}

	r := NewResolver(c.cs.ServingV1(), DefaultNamespace, time.Hour)
	u, err := r.Resolve(ctx, "fraud", "fraud-00001")
	if err != nil || u.String() != stable.URL {
		t.Fatalf("Resolve(fraud-00001) = %v, %v; want %s", u, err, stable.URL)
	}
	_, err = r.Resolve(ctx, "fraud", "fraud-00002")
	if err == nil || !strings.Contains(err.Error(), "revision fraud-00002 has no URL") || !strings.Contains(err.Error(), "stable=fraud-00001") {
		t.Fatalf("Resolve of an undeployed revision: %v", err)
	}
	if _, err := r.Resolve(ctx, "recommend", "recommend-00001"); err == nil || !apierrors.IsNotFound(unwrapAll(err)) {
		t.Fatalf("Resolve of an unknown function: %v, want NotFound", err)
	}

	// The canary arrives; a miss reads the Service again despite the hour TTL.
	if _, err := d.Deploy(ctx, m, DeployOptions{Options: Options{Traffic: fraudSplit(t, m)}, Wait: true, Timeout: time.Second}); err != nil {
		t.Fatal(err)
	}
	u, err = r.Resolve(ctx, "fraud", "fraud-00002")
	if err != nil || u.String() != canary.URL {
		t.Fatalf("Resolve(fraud-00002) = %v, %v; want %s", u, err, canary.URL)
	}

	// Proxy a request through what was resolved, as the router does.
	front := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		target, err := r.Resolve(req.Context(), "fraud", req.Header.Get("X-Revision"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		httputil.NewSingleHostReverseProxy(target).ServeHTTP(w, req)
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	front.Listener = ln
	front.Start()
	defer front.Close()
	for _, rev := range []string{"fraud-00001", "fraud-00002"} {
		req, _ := http.NewRequest(http.MethodPost, front.URL+"/", strings.NewReader(`{"amount":1}`))
		req.Header.Set("X-Revision", rev)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Pilotlight-Revision") != rev || string(body) != rev+` got {"amount":1}` {
			t.Errorf("%s: status %d revision %q body %q", rev, resp.StatusCode, resp.Header.Get("X-Pilotlight-Revision"), body)
		}
	}
}

func TestResolverTTLAndUntaggedRevision(t *testing.T) {
	c := newCluster(t)
	m := fraudManifest(t)
	m.Revisions[0].Tag = "" // an untagged revision is reachable only while it has all the traffic
	m.Revisions[1].Tag = "next"
	ctx := context.Background()
	d := deployer(c, nil)
	if _, err := d.Deploy(ctx, m, DeployOptions{Options: Options{Traffic: flags.Split{"fraud-00001": 100}}, Wait: true, Timeout: time.Second}); err != nil {
		t.Fatal(err)
	}
	now := time.Unix(0, 0)
	r := NewResolver(c.cs.ServingV1(), DefaultNamespace, time.Minute)
	r.SetClock(func() time.Time { return now })
	u, err := r.Resolve(ctx, "fraud", "fraud-00001")
	if err != nil || u.String() != "http://fraud.pilotlight.svc.cluster.local" {
		t.Fatalf("untagged revision at 100%%: %v, %v; want the service URL", u, err)
	}
	// The tag "next" moves to a URL the cache does not know yet.
	c.urlFor = func(tag string) string { return "http://" + tag + "-moved.example" }
	c.resync(t)
	// Still cached, and fraud-00002 was cached too by the first read.
	if u, _ := r.Resolve(ctx, "fraud", "fraud-00002"); u.String() != "http://next-fraud.pilotlight.svc.cluster.local" {
		t.Errorf("within TTL: %v", u)
	}
	now = now.Add(2 * time.Minute)
	if u, _ := r.Resolve(ctx, "fraud", "fraud-00002"); u.String() != "http://next-moved.example" {
		t.Errorf("after TTL: %v, want the moved URL", u)
	}
	c.urlFor = func(tag string) string { return "http://" + tag + "-again.example" }
	c.resync(t)
	r.Invalidate("fraud")
	if u, _ := r.Resolve(ctx, "fraud", "fraud-00002"); u.String() != "http://next-again.example" {
		t.Errorf("after Invalidate: %v", u)
	}
}

func unwrapAll(err error) error {
	for {
		type unwrapper interface{ Unwrap() error }
		u, ok := err.(unwrapper)
		if !ok || u.Unwrap() == nil {
			return err
		}
		err = u.Unwrap()
	}
}
