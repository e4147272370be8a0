package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Cluster is a Knative cluster's router (make cluster-up prints these): the
// router Service's URL, an API key, and the API to watch the revision's pods.
type Cluster struct {
	RouterURL string
	Key       string
	Kube      kubernetes.Interface
	Namespace string
	Revision  string // the revision measured, e.g. fraud-00002
	Function  string
	Body      []byte // a V2 infer request for Function
	Log       io.Writer
}

// clusterZeroTimeout bounds the wait for Knative to take a revision to
// zero: its stable window and grace period, then the pod's drain (about
// 30s: queue-proxy's, then the runtime's).
const clusterZeroTimeout = 3 * time.Minute

// ClusterColdStart measures, n times, the first response from zero through
// the cluster's router: once no pod of the revision is left and none in
// its namespace is terminating (podsInTheWay), one V2 infer for that revision goes to the router Service; the
// router sends it to the revision's Service, where Knative's activator
// holds it until a new pod (queue-proxy and runtime) is Ready.
func ClusterColdStart(ctx context.Context, c Cluster, n int) ([]Row, error) {
	url := strings.TrimSuffix(c.RouterURL, "/") + "/v2/models/" + c.Function + "/versions/" + c.Revision + "/infer"
	client := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{Proxy: nil}}
	var first []time.Duration
	for i := range n {
		t0 := time.Now()
		for {
			left, err := podsInTheWay(ctx, c)
			if err != nil {
				return nil, err
			}
			if left == 0 {
				break
			}
			if time.Since(t0) > clusterZeroTimeout {
				return nil, fmt.Errorf("revision %s/%s: %d of its pods, or other pods in %s still terminating, after %s: is the cluster's scale-to-zero grace period short (config-autoscaler)?", c.Namespace, c.Revision, left, c.Namespace, clusterZeroTimeout)
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
		fmt.Fprintf(c.Log, "cluster cold start %d/%d: %s at zero after %s\n", i+1, n, c.Revision, time.Since(t0).Round(time.Second))
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(string(c.Body)))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+c.Key)
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("cold request %d through %s: %w", i, c.RouterURL, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		d := time.Since(start)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Pilotlight-Revision") != c.Revision {
			return nil, fmt.Errorf("cold request %d: %s from %q: %s", i, resp.Status, resp.Header.Get("X-Pilotlight-Revision"), b)
		}
		first = append(first, d)
	}
	return []Row{
		{Name: fmt.Sprintf("scale from zero, Knative cluster (router → activator → new pod): first response p50 (n=%d)", n), Value: ms(quantile(first, .5))},
		{Name: "scale from zero, Knative cluster: first response p99", Value: ms(quantile(first, .99))},
		{Name: "scale from zero, Knative cluster: slowest", Value: ms(quantile(first, 1))},
	}, nil
}

// podsInTheWay counts the revision's pods, terminating ones included, and
// the namespace's other pods still terminating: a draining pod keeps its
// CPU request until it is gone (queue-proxy sleeps 30 s on SIGTERM), and
// on a small node the new pod then waits Pending behind it, which times
// the node's room, not the cold start (9 s instead of 1 in a CI run).
func podsInTheWay(ctx context.Context, c Cluster) (int, error) {
	pods, err := c.Kube.CoreV1().Pods(c.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, fmt.Errorf("list pods in %s: %w", c.Namespace, err)
	}
	n := 0
	for _, p := range pods.Items {
		if p.Labels["serving.knative.dev/revision"] == c.Revision || p.DeletionTimestamp != nil {
			n++
		}
	}
	return n, nil
}
