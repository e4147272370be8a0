package knative

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
)

// apiServer serves the slice of the Kubernetes REST API the Deployer and the
// Resolver use (Knative services and revisions), backed by the cluster stand-in,
// so NewClient's kubeconfig loading and the generated REST client run for real.
func apiServer(t *testing.T, c *cluster, token string) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var requests atomic.Int64
	const prefix = "/apis/serving.knative.dev/v1/namespaces/"
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if r.Header.Get("Authorization") != "Bearer "+token {
			writeStatus(w, apierrors.NewUnauthorized("bad token"))
			return
		}
		rest, ok := strings.CutPrefix(r.URL.Path, prefix)
		if !ok {
			http.NotFound(w, r)
			return
		}
		parts := strings.Split(rest, "/") // ns, resource[, name]
		ns, resource := parts[0], parts[1]
		name := ""
		if len(parts) > 2 {
			name = parts[2]
		}
		ctx := r.Context()
		var obj any
		var err error
		switch {
		case resource == "services" && r.Method == http.MethodGet:
			obj, err = c.cs.ServingV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
		case resource == "services" && (r.Method == http.MethodPost || r.Method == http.MethodPut):
			var svc servingv1.Service
			if err := json.NewDecoder(r.Body).Decode(&svc); err != nil {
				writeStatus(w, apierrors.NewBadRequest(err.Error()))
				return
			}
			if r.Method == http.MethodPost {
				obj, err = c.cs.ServingV1().Services(ns).Create(ctx, &svc, metav1.CreateOptions{})
			} else {
				obj, err = c.cs.ServingV1().Services(ns).Update(ctx, &svc, metav1.UpdateOptions{})
			}
		case resource == "revisions" && r.Method == http.MethodGet:
			obj, err = c.cs.ServingV1().Revisions(ns).Get(ctx, name, metav1.GetOptions{})
		default:
			writeStatus(w, apierrors.NewMethodNotSupported(servingv1.Resource(resource), r.Method))
			return
		}
		if err != nil {
			writeStatus(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if r.Method == http.MethodPost {
			w.WriteHeader(http.StatusCreated)
		}
		json.NewEncoder(w).Encode(obj)
	})
	srv := httptest.NewUnstartedServer(h)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = ln
	srv.StartTLS() // client-go sends credentials only over TLS
	t.Cleanup(srv.Close)
	return srv, &requests
}

func writeStatus(w http.ResponseWriter, err error) {
	var st apierrors.APIStatus
	if !errors.As(err, &st) {
		st = apierrors.NewInternalError(err)
	}
	s := st.Status()
	s.Kind, s.APIVersion = "Status", "v1"
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(int(s.Code))
	json.NewEncoder(w).Encode(s)
}

func writeKubeconfig(t *testing.T, srv *httptest.Server, token string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	ca := base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	cfg := `apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: "` + srv.URL + `", certificate-authority-data: "` + ca + `"}
users:
- name: deployer
  user: {token: "` + token + `"}
contexts:
- name: other
  context: {cluster: test, user: nobody}
- name: test
  context: {cluster: test, user: deployer, namespace: pilotlight}
current-context: other
`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestDeployOverHTTP runs a whole first deploy through NewClient, a kubeconfig
// file with a non-current context, and the REST client, then resolves a tag
// URL over the same connection.
func TestDeployOverHTTP(t *testing.T) {
	c := newCluster(t)
	const token = "s3cret"
	srv, requests := apiServer(t, c, token)
	kubeconfig := writeKubeconfig(t, srv, token)

	client, host, err := NewClient(kubeconfig, "test")
	if err != nil {
		t.Fatal(err)
	}
	if host != srv.URL {
		t.Errorf("host %q, want %q", host, srv.URL)
	}
	m := fraudManifest(t)
	d := &Deployer{Client: client, PollInterval: 5 * time.Millisecond}
	res, err := d.Deploy(context.Background(), m, DeployOptions{Options: Options{Traffic: fraudSplit(t, m)}, Wait: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if res.URL != "http://fraud.pilotlight.svc.cluster.local" || len(res.Steps) != 2 {
		t.Errorf("result %+v", res)
	}
	if got := trafficOf(c.service(t)); got != "stable=fraud-00001:90 canary=fraud-00002:10" {
		t.Errorf("traffic %q", got)
	}
	if requests.Load() < 6 {
		t.Errorf("%d requests reached the API server", requests.Load())
	}
	u, err := NewResolver(client, DefaultNamespace, 0).Resolve(context.Background(), "fraud", "fraud-00002")
	if err != nil || u.Host != "canary-fraud.pilotlight.svc.cluster.local" {
		t.Errorf("resolve over HTTP: %v, %v", u, err)
	}

	// The current context's user has no token: the server refuses it, and
	// the error says so.
	other, _, err := NewClient(kubeconfig, "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = (&Deployer{Client: other}).Deploy(context.Background(), m, DeployOptions{})
	if !apierrors.IsUnauthorized(err) {
		t.Errorf("deploy with the wrong credentials: %v, want Unauthorized", err)
	}
}

func TestNewClientWithoutConfig(t *testing.T) {
	t.Setenv("KUBECONFIG", filepath.Join(t.TempDir(), "missing"))
	t.Setenv("HOME", t.TempDir())
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	_, _, err := NewClient("", "")
	if err == nil || !strings.Contains(err.Error(), "load cluster config") {
		t.Fatalf("err = %v", err)
	}
}
