package rollout

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// With TLS, a peer must present the router's own certificate: a peer
// presenting another is refused before the client's key is sent.
func TestOutcomePeersPinTheRoutersCertificate(t *testing.T) {
	var keySeen []string
	peer := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		keySeen = append(keySeen, r.Header.Get("Authorization"))
		_ = json.NewEncoder(w).Encode(forwardedAnswer{Statuses: []string{statusJoined}})
	}))
	defer peer.Close()
	// Another certificate: httptest's servers all present the same one.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"pilotlight-router"}}
	otherCert, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	target := strings.TrimPrefix(peer.URL, "https://")
	auth := http.Header{"Authorization": {"Bearer k"}}
	for _, tc := range []struct {
		name string
		cert []byte
		ok   bool
	}{{"the router's own certificate", peer.Certificate().Raw, true}, {"another certificate", otherCert, false}} {
		t.Run(tc.name, func(t *testing.T) {
			keySeen = nil
			p := &OutcomePeers{Self: "router-a", Certificate: &tls.Certificate{Certificate: [][]byte{tc.cert}}}
			st, err := p.send(t.Context(), target, "fraud", []byte(`{}`), auth, 1)
			if tc.ok && (err != nil || len(st) != 1 || st[0] != statusJoined || len(keySeen) != 1) {
				t.Fatalf("pinned peer: %v %v (keys seen %v)", st, err, keySeen)
			}
			if !tc.ok && (err == nil || len(keySeen) != 0) {
				t.Fatalf("a peer with another certificate: err %v, keys it saw %v; want refused before the key is sent", err, keySeen)
			}
		})
	}
}
