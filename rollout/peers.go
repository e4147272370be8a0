package rollout

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Outcomes in a cluster: a client posts its outcomes to the router
// Service, which hands the POST to any replica, while each prediction was
// recorded by the replica that served it. The ids are the client's (the
// V2 "id", X-Request-Id, or a targeting key), so the router cannot write
// its replica into them; instead the replica that receives a batch joins
// what it holds and forwards the rest, in one request per peer, to the
// other ready replicas of the router Service's EndpointSlices, which join
// what they hold. Each replica then exports the outcomes it joined, per
// revision, and the rollout sums them over the fleet (fleet.go) as it
// sums requests.
//
// Credentials: the forward carries the client's own key (Authorization or
// X-API-Key) to another replica of the router, which checks it against the
// same keys file as the first did, on the same data port. No key goes to
// an instance, to Knative, or outside the Service's endpoints, and no new
// secret is shared between replicas. With TLS, a peer must present the
// router's own certificate (every replica mounts the same one; pod IPs
// are not in it, so it is pinned rather than checked by name).

// HeaderOutcomesForwarded marks a batch forwarded by another replica: the
// receiver joins what it holds, says what became of each outcome, and
// forwards nothing further. Its value names the replica that forwarded.
const HeaderOutcomesForwarded = "X-Pilotlight-Outcomes-Forwarded"

// DataPortName is the router Service's port that reaches each replica's
// data listener (config/router/router.yaml).
const DataPortName = "http"

// forwardTimeout bounds one forwarded batch.
const forwardTimeout = 5 * time.Second

// OutcomePeers finds the other router replicas through the router
// Service's EndpointSlices, and forwards outcomes to them.
type OutcomePeers struct {
	Client    kubernetes.Interface
	Namespace string
	Service   string
	Self      string // this replica's pod name (POD_NAME): its own endpoint is skipped
	Port      string // "": DataPortName
	// Certificate, when the router serves TLS, is its own certificate
	// (leaf first): a peer must present the same one.
	Certificate *tls.Certificate
	HTTP        *http.Client // nil: built from the above
	once        sync.Once
}

func (p *OutcomePeers) client() *http.Client {
	p.once.Do(func() {
		if p.HTTP != nil {
			return
		}
		tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4, IdleConnTimeout: 90 * time.Second}
		if c := p.Certificate; c != nil && len(c.Certificate) > 0 {
			want := c.Certificate[0]
			tr.TLSClientConfig = &tls.Config{
				// Pod IPs are not in the certificate: the peer is checked by
				// presenting exactly the router's own, below.
				InsecureSkipVerify: true, //nolint:gosec // pinned in VerifyPeerCertificate
				VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
					if len(raw) == 0 || !bytes.Equal(raw[0], want) {
						return errors.New("the peer does not present the router's certificate")
					}
					return nil
				},
			}
		}
		p.HTTP = &http.Client{Transport: tr, Timeout: forwardTimeout}
	})
	return p.HTTP
}

func (p *OutcomePeers) scheme() string {
	if p.Certificate != nil {
		return "https"
	}
	return "http"
}

func (p *OutcomePeers) port() string {
	if p.Port == "" {
		return DataPortName
	}
	return p.Port
}

// forwardedBatch is the body of a forwarded POST: the outcomes, and each
// one's position in the batch its client posted (errors name it).
type forwardedBatch struct {
	Outcomes  []Outcome `json:"outcomes"`
	Positions []int     `json:"positions"`
}

// forwardedAnswer is a peer's answer: what became of each outcome.
type forwardedAnswer struct {
	Statuses []string `json:"statuses"`
}

// peerRejected is a peer's 4xx: an outcome it holds the prediction of
// does not fit it. Nothing was joined there.
type peerRejected struct{ peer, msg string }

func (e *peerRejected) Error() string { return e.msg + " (at router replica " + e.peer + ")" }

// fromPeer says whether a forwarded batch came from another replica of
// the router Service: replica (the header's value) is a ready endpoint's
// pod, not this one, and remoteAddr (the TCP peer, never a header) is
// one of that endpoint's addresses. A client cannot pass for a replica by
// sending the header: it would have to send from a router pod's address.
func (p *OutcomePeers) fromPeer(ctx context.Context, replica, remoteAddr string) (bool, error) {
	if replica == "" || replica == p.Self {
		return false, nil
	}
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	list, err := p.Client.DiscoveryV1().EndpointSlices(p.Namespace).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + p.Service})
	if err != nil {
		return false, fmt.Errorf("list the EndpointSlices of Service %s/%s: %w", p.Namespace, p.Service, err)
	}
	for _, sl := range list.Items {
		for _, e := range sl.Endpoints {
			if e.TargetRef == nil || e.TargetRef.Name != replica || (e.Conditions.Ready != nil && !*e.Conditions.Ready) {
				continue
			}
			if slices.Contains(e.Addresses, host) {
				return true, nil
			}
		}
	}
	return false, nil
}

// forward sends outcomes (at positions of the client's batch) to every
// peer and merges their statuses: joined at any peer wins over duplicate,
// duplicate over unknown. A peer that cannot be reached leaves its share
// unknown, as a prediction evicted from its window would be; a peer's 4xx
// is returned (the batch is all or nothing).
func (p *OutcomePeers) forward(ctx context.Context, function string, outcomes []Outcome, positions []int, auth http.Header) ([]string, []string, error) {
	merged := make([]string, len(outcomes))
	for i := range merged {
		merged[i] = statusUnknown
	}
	targets, err := serviceEndpoints(ctx, p.Client, p.Namespace, p.Service, p.port(), p.Self)
	if err != nil {
		return merged, []string{err.Error()}, nil
	}
	body, err := json.Marshal(forwardedBatch{Outcomes: outcomes, Positions: positions})
	if err != nil {
		return nil, nil, err
	}
	var (
		mu          sync.Mutex
		wg          sync.WaitGroup
		rejected    error
		unreachable []string
	)
	rank := map[string]int{statusUnknown: 0, statusDuplicate: 1, statusJoined: 2}
	for _, target := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := p.send(ctx, target, function, body, auth, len(outcomes))
			mu.Lock()
			defer mu.Unlock()
			var rej *peerRejected
			switch {
			case errors.As(err, &rej):
				rejected = err
			case err != nil:
				unreachable = append(unreachable, target+": "+err.Error())
			default:
				for i, s := range st {
					if rank[s] > rank[merged[i]] {
						merged[i] = s
					}
				}
			}
		}()
	}
	wg.Wait()
	return merged, unreachable, rejected
}

func (p *OutcomePeers) send(ctx context.Context, target, function string, body []byte, auth http.Header, n int) ([]string, error) {
	u := p.scheme() + "://" + target + "/v2/models/" + function + "/outcomes"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderOutcomesForwarded, p.Self)
	for k, v := range auth {
		req.Header[k] = v
	}
	resp, err := p.client().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxOutcomeBodyBytes))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusBadRequest {
		var e struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal(raw, &e)
		return nil, &peerRejected{peer: target, msg: e.Error}
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s answered %s: %s", u, resp.Status, bytes.TrimSpace(raw))
	}
	var a forwardedAnswer
	if err := json.Unmarshal(raw, &a); err != nil || len(a.Statuses) != n {
		return nil, fmt.Errorf("%s: an answer that does not say what became of each of %d outcomes", u, n)
	}
	return a.Statuses, nil
}
