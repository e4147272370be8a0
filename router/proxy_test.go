package router_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	cryptorand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/frame"
	"github.com/pilotlight/pilotlight/internal/testbin"
	"github.com/pilotlight/pilotlight/router"
	"github.com/pilotlight/pilotlight/router/auth"
)

// fakeBackend hands out the next target of a script per Acquire and
// records every Release; a nil target means "hold until ctx ends".
type fakeBackend struct {
	mu       sync.Mutex
	script   []func(ctx context.Context) (router.Target, error)
	released []bool // failed flags, in order
}

func (b *fakeBackend) Acquire(ctx context.Context, function, revision string) (router.Target, error) {
	b.mu.Lock()
	if len(b.script) == 0 {
		b.mu.Unlock()
		return router.Target{}, errors.New("fake backend: no more targets scripted")
	}
	next := b.script[0]
	b.script = b.script[1:]
	b.mu.Unlock()
	return next(ctx)
}

func (b *fakeBackend) target(base string) func(context.Context) (router.Target, error) {
	return b.targetAt(upstream{base: base})
}

func (b *fakeBackend) targetAt(up upstream) func(context.Context) (router.Target, error) {
	return func(context.Context) (router.Target, error) {
		return router.Target{BaseURL: up.base, Socket: up.socket, Release: func(failed bool) {
			b.mu.Lock()
			b.released = append(b.released, failed)
			b.mu.Unlock()
		}}, nil
	}
}

func (b *fakeBackend) releases() []bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]bool(nil), b.released...)
}

type statusErr struct{ code int }

func (e statusErr) Error() string   { return fmt.Sprintf("scripted %d", e.code) }
func (e statusErr) HTTPStatus() int { return e.code }

func testFunction() *functions.Manifest {
	return &functions.Manifest{Name: "echo", Handler: "tensor", Revisions: []functions.Revision{{Name: "echo-00001"}},
		Runtime: functions.Runtime{MaxBodyBytes: 4 << 20}}
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

type fakeRouter struct {
	t   testing.TB
	url string
	reg *prometheus.Registry
	b   *fakeBackend
}

func startFake(t *testing.T, b *fakeBackend, timeout time.Duration, mutate func(*router.Config)) *fakeRouter {
	t.Helper()
	reg := prometheus.NewRegistry()
	rt := newRouter(t, router.Config{Functions: []*functions.Manifest{testFunction()}, Backend: b, RequestTimeout: timeout, Registry: reg, Logger: quietLogger(), Limits: testLimits()}, mutate)
	return &fakeRouter{t: t, url: serveRouter(t, rt), reg: reg, b: b}
}

// newRouter is router.New(cfg) after mutate (when not nil) changed cfg,
// closed when the test ends.
func newRouter(t *testing.T, cfg router.Config, mutate func(*router.Config)) *router.Router {
	t.Helper()
	if mutate != nil {
		mutate(&cfg)
	}
	rt, err := router.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Close)
	return rt
}

func (f *fakeRouter) count(code string) float64 {
	return testbin.Metric(f.t, f.reg, "pilotlight_requests_total", map[string]string{"function": "echo", "code": code})
}

// TestProxyOutcomes is the router's status mapping, table-driven over a
// fake Backend (no child processes): each outcome's status, error text,
// what Release was told, and pilotlight_requests_total.
func TestProxyOutcomes(t *testing.T) {
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"ok":true}`)
	}))
	defer ok.Close()
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	defer slow.Close()
	hold := func(ctx context.Context) (router.Target, error) { <-ctx.Done(); return router.Target{}, ctx.Err() }
	cases := []struct {
		name     string
		script   func(b *fakeBackend) []func(context.Context) (router.Target, error)
		timeout  time.Duration
		client   time.Duration // client gives up after this (0: never)
		code     int
		mentions string
		released []bool
		header   string // a header the answer must carry
	}{
		{name: "served", code: 200, released: []bool{false},
			script: func(b *fakeBackend) []func(context.Context) (router.Target, error) {
				return []func(context.Context) (router.Target, error){b.target(ok.URL)}
			}},
		{name: "retry once on another instance", code: 200, released: []bool{true, false},
			script: func(b *fakeBackend) []func(context.Context) (router.Target, error) {
				return []func(context.Context) (router.Target, error){b.target(deadAddr(t)), b.target(ok.URL)}
			}},
		{name: "unreachable twice: 502", code: 502, mentions: "unreachable twice", released: []bool{true, true},
			script: func(b *fakeBackend) []func(context.Context) (router.Target, error) {
				return []func(context.Context) (router.Target, error){b.target(deadAddr(t)), b.target(deadAddr(t))}
			}},
		{name: "queue full: 503 shed", code: 503, mentions: "queue", header: "Retry-After",
			script: func(b *fakeBackend) []func(context.Context) (router.Target, error) {
				return []func(context.Context) (router.Target, error){func(context.Context) (router.Target, error) {
					return router.Target{}, fmt.Errorf("activator queue full: %w", statusErr{503})
				}}
			}},
		{name: "held past the request timeout: 504", code: 504, mentions: "request timeout", timeout: 50 * time.Millisecond,
			script: func(b *fakeBackend) []func(context.Context) (router.Target, error) {
				return []func(context.Context) (router.Target, error){hold}
			}},
		{name: "instance slower than the request timeout: 504, instance not failed", code: 504, timeout: 100 * time.Millisecond, released: []bool{false},
			script: func(b *fakeBackend) []func(context.Context) (router.Target, error) {
				return []func(context.Context) (router.Target, error){b.target(slow.URL)}
			}},
		{name: "client gone while held: 499", code: 499, client: 50 * time.Millisecond,
			script: func(b *fakeBackend) []func(context.Context) (router.Target, error) {
				return []func(context.Context) (router.Target, error){hold}
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := &fakeBackend{}
			b.script = tc.script(b)
			timeout := tc.timeout
			if timeout == 0 {
				timeout = 5 * time.Second
			}
			f := startFake(t, b, timeout, nil)
			ctx := context.Background()
			if tc.client > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.client)
				defer cancel()
			}
			req, _ := http.NewRequestWithContext(ctx, "POST", f.url+"/functions/echo", strings.NewReader(`{}`))
			resp, err := http.DefaultClient.Do(req)
			if tc.code == 499 {
				if err == nil {
					resp.Body.Close()
					t.Fatalf("the client gave up, yet got %d", resp.StatusCode)
				}
				// Nobody reads a 499: wait for the router to count it.
				deadline := time.Now().Add(5 * time.Second)
				for f.count("499") != 1 {
					if time.Now().After(deadline) {
						t.Fatal("a client that left while held was not counted as 499")
					}
					time.Sleep(5 * time.Millisecond)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var out map[string]any
			_ = json.Unmarshal(raw, &out)
			if resp.StatusCode != tc.code || !strings.Contains(fmt.Sprint(out["error"]), tc.mentions) {
				t.Fatalf("status %d %s, want %d mentioning %q", resp.StatusCode, raw, tc.code, tc.mentions)
			}
			if tc.header != "" && resp.Header.Get(tc.header) == "" {
				t.Errorf("answer lacks %s", tc.header)
			}
			if tc.code != 200 && resp.Header.Get("Content-Type") != "application/json" {
				t.Errorf("error answer's Content-Type %q", resp.Header.Get("Content-Type"))
			}
			if got := b.releases(); fmt.Sprint(got) != fmt.Sprint(tc.released) && !(len(got) == 0 && len(tc.released) == 0) {
				t.Errorf("Release(failed) calls %v, want %v", got, tc.released)
			}
			if n := f.count(fmt.Sprint(tc.code)); n != 1 {
				t.Errorf("pilotlight_requests_total{code=%d} = %v, want 1", tc.code, n)
			}
		})
	}
}

// TestProxyHeaders: credentials and hop-by-hop headers (including those
// Connection names) never reach the instance; X-Forwarded-For/-Proto are
// set; traceparent passes; the answer's hop-by-hop headers are dropped too.
func TestProxyHeaders(t *testing.T) {
	var got http.Header
	ups := upstreams(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Header.Clone()
		got.Set("X-Seen-Path", r.URL.Path)
		w.Header().Set("Connection", "X-Instance-Private")
		w.Header().Set("X-Instance-Private", "secret")
		w.Header().Set("X-Instance-Public", "ok")
		fmt.Fprint(w, `{}`)
	}))
	client, ops := "pl_client-key-000000000000000000000000", "pl_ops-key-00000000000000000000000000000"
	keys, err := auth.Parse([]byte(fmt.Sprintf("keys:\n  - id: client\n    hash: %s\n    functions: [echo]\n  - id: ops\n    hash: %s\n    admin: true\n", auth.Sum(client), auth.Sum(ops))), "test")
	if err != nil {
		t.Fatal(err)
	}
	for _, up := range ups {
		for _, via := range []string{"fast listener", "net/http handler"} {
			t.Run(up.name+"/"+via, func(t *testing.T) {
				got = nil
				_, url := oneTargetRouter(t, up, via, keys)
				req, _ := http.NewRequest("POST", url+"/functions/echo?x=1", strings.NewReader(`{}`))
				req.Header.Set("Authorization", "Bearer "+client)
				req.Header.Set("X-API-Key", client)
				req.Header.Set("Connection", "keep-alive, X-Hop-Secret")
				req.Header.Set("X-Hop-Secret", "must not pass")
				req.Header.Set("Proxy-Authorization", "Basic eA==")
				req.Header.Set("X-Forwarded-For", "203.0.113.9")
				req.Header.Set("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
				req.Header.Set("X-User-Header", "kept")
				resp := testbin.DoOK(t, nil, req)
				for _, h := range []string{"Authorization", "X-Api-Key", "X-Hop-Secret", "Proxy-Authorization"} {
					if v := got.Get(h); v != "" {
						t.Errorf("the instance saw %s: %q", h, v)
					}
				}
				if v := got.Get("X-Forwarded-For"); v != "203.0.113.9, 127.0.0.1" {
					t.Errorf("X-Forwarded-For %q, want the client's chain plus 127.0.0.1", v)
				}
				if v := got.Get("X-Forwarded-Proto"); v != "http" {
					t.Errorf("X-Forwarded-Proto %q", v)
				}
				if got.Get("Traceparent") == "" || got.Get("X-User-Header") != "kept" {
					t.Errorf("end-to-end headers lost: %v", got)
				}
				if got.Get("X-Seen-Path") != "/" {
					t.Errorf("a function call reached the instance at %q, want POST / (Knative style)", got.Get("X-Seen-Path"))
				}
				if resp.Header.Get("X-Instance-Private") != "" || resp.Header.Get("X-Instance-Public") != "ok" {
					t.Errorf("answer headers: %v (the one Connection names must go, the others stay)", resp.Header)
				}
				if resp.Header.Get("X-Pilotlight-Revision") != "echo-00001" {
					t.Errorf("X-Pilotlight-Revision %q", resp.Header.Get("X-Pilotlight-Revision"))
				}
			})
		}
	}
}

// TestLargeBodyRejectedEarly: an instance answers before reading a large
// body (as the V2-only 404 and the not-ready 503 do). The client gets that
// answer, the instance is not marked failed, and (under -race) nothing
// reuses the pooled body while the upstream write is in flight: requests
// with different bodies run concurrently and each instance sees only its own.
func TestLargeBodyRejectedEarly(t *testing.T) {
	var mismatched atomic.Int64
	ups := upstreams(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Early") == "1" {
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, `{"error":"V2 only"}`)
			return
		}
		b, _ := io.ReadAll(r.Body)
		if len(b) == 0 || strings.Count(string(b), string(b[:1])) != len(b) {
			mismatched.Add(1)
		}
		fmt.Fprint(w, `{}`)
	}))
	for _, up := range ups {
		t.Run(up.name, func(t *testing.T) { largeBodiesRejectedEarly(t, up, &mismatched) })
	}
}

func largeBodiesRejectedEarly(t *testing.T, up upstream, mismatched *atomic.Int64) {
	const n = 24
	b := &fakeBackend{}
	for i := 0; i < n; i++ {
		b.script = append(b.script, b.targetAt(up))
	}
	// Two dozen 3 MiB uploads at once under -race on a shared machine: the
	// read timeout must not be what the test measures.
	f := startFake(t, b, time.Minute, func(c *router.Config) { c.Limits.ReadTimeout = time.Minute; c.Limits.WriteTimeout = 2 * time.Minute })
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			fill := byte('a' + i%26)
			size := 3 << 20 // larger than the socket buffers: the write is still going when the answer comes
			body := strings.Repeat(string(fill), size)
			req, _ := http.NewRequest("POST", f.url+"/functions/echo", strings.NewReader(body))
			early := i%2 == 0
			if early {
				req.Header.Set("X-Early", "1")
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs <- err.Error()
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			want := 200
			if early {
				want = 404
			}
			if resp.StatusCode != want {
				errs <- fmt.Sprintf("request %d: %d, want %d", i, resp.StatusCode, want)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if mismatched.Load() != 0 {
		t.Errorf("%d bodies reached the instance mixed with another request's", mismatched.Load())
	}
	for _, failed := range b.releases() {
		if failed {
			t.Fatal("an instance that answered early was released as failed (it would be stopped)")
		}
	}
}

// TestHTTP2OnTheSameListener: with HTTP2Handler set, an h2c connection
// (prior knowledge) reaches it while HTTP/1.1 keeps the fast path.
func TestHTTP2OnTheSameListener(t *testing.T) {
	b := &fakeBackend{}
	h2 := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "h2 %s %d", r.URL.Path, r.ProtoMajor)
	})
	f := startFake(t, b, time.Second, func(c *router.Config) { c.HTTP2Handler = h2 })
	// The standard library's own unencrypted HTTP/2 client (prior knowledge).
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	resp, err := (&http.Client{Transport: tr}).Get(f.url + "/anything")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(raw) != "h2 /anything 2" {
		t.Fatalf("h2c request answered %q, want the HTTP/2 handler", raw)
	}
	resp, err = http.Get(f.url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 1 {
		t.Fatalf("HTTP/1.1 /healthz: %d HTTP/%d", resp.StatusCode, resp.ProtoMajor)
	}
	// A raw HTTP/1.1 request whose first bytes look like nothing in particular still works.
	conn, err := net.Dial("tcp", strings.TrimPrefix(f.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	line, _ := bufio.NewReader(conn).ReadString('\n')
	if !strings.Contains(line, "200") {
		t.Fatalf("raw HTTP/1.1: %q", line)
	}
}

// TestLargeResponsesStream: answers over the buffered size (known length or
// chunked) reach the client whole, through both front doors, and the
// instance is given back (not failed) only once they have.
func TestLargeResponsesStream(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 128<<10) // 2 MiB
	ups := upstreams(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("chunked") == "1" {
			for i := 0; i < 4; i++ {
				io.WriteString(w, big[:len(big)/4])
				w.(http.Flusher).Flush()
			}
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(big)))
		io.WriteString(w, big)
	}))
	for _, c := range []struct {
		up     upstream
		via, q string
	}{{ups[0], "fast listener", ""}, {ups[0], "fast listener", "?chunked=1"}, {ups[0], "net/http handler", ""},
		{ups[0], "net/http handler", "?chunked=1"}, {ups[1], "fast listener", ""}, {ups[1], "net/http handler", ""}} {
		up, via, q := c.up, c.via, c.q
		{
			t.Run(up.name+"/"+via+q, func(t *testing.T) {
				b, url := oneTargetRouter(t, up, via, nil)
				resp, err := http.Post(url+"/functions/echo"+q, "application/json", strings.NewReader(`{}`))
				if err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 || len(got) != len(big) || string(got) != big {
					t.Fatalf("status %d, %d of %d bytes, err %v", resp.StatusCode, len(got), len(big), err)
				}
				deadline := time.Now().Add(5 * time.Second)
				for len(b.releases()) == 0 {
					if time.Now().After(deadline) {
						t.Fatal("the instance was never given back after a streamed answer")
					}
					time.Sleep(5 * time.Millisecond)
				}
				if r := b.releases(); len(r) != 1 || r[0] {
					t.Errorf("Release calls %v, want one Release(false)", r)
				}
			})
		}
	}
}

// upstream is a test instance: reached over HTTP at base, or, when socket
// is set, over its framed Unix socket (as the local engine's instances).
type upstream struct{ name, base, socket string }

// upstreams serves h both ways: over HTTP, and over a framed socket with
// the same frame.Server the runtime uses. The framed one's base is a port
// nothing listens on, so a request that went over HTTP would fail.
func upstreams(t *testing.T, h http.Handler) []upstream {
	t.Helper()
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	sock := filepath.Join(t.TempDir(), "instance.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	fs := &frame.Server{Handler: h, Limit: func() int { return 64 << 20 }, DrainTimeout: time.Second, Log: quietLogger()}
	done := make(chan struct{})
	go func() { fs.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return []upstream{{name: "http", base: ts.URL}, {name: "frames", base: "http://127.0.0.1:1", socket: sock}}
}

// oneTargetRouter runs a router whose backend hands out up once, behind
// the fast listener or the net/http Handler (via).
func oneTargetRouter(t *testing.T, up upstream, via string, keys *auth.Keys) (*fakeBackend, string) {
	t.Helper()
	b := &fakeBackend{}
	b.script = []func(context.Context) (router.Target, error){b.targetAt(up)}
	rt, err := router.New(router.Config{Functions: []*functions.Manifest{testFunction()}, Backend: b, Registry: prometheus.NewRegistry(), Logger: quietLogger(), Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Close)
	if via == "fast listener" {
		return b, serveRouter(t, rt)
	}
	ts := httptest.NewServer(rt.Handler())
	t.Cleanup(ts.Close)
	return b, ts.URL
}

// selfSigned writes a certificate and key for 127.0.0.1 into dir.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), cryptorand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(cryptorand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TestTLSFrontDoor: under TLS, HTTP/1.1 takes the fast path (and the
// instance learns X-Forwarded-Proto: https) while ALPN "h2" reaches the
// HTTP/2 handler on the same port.
func TestTLSFrontDoor(t *testing.T) {
	var proto string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proto = r.Header.Get("X-Forwarded-Proto")
		fmt.Fprint(w, `{}`)
	}))
	defer up.Close()
	certFile, keyFile, pool := selfSigned(t, t.TempDir())
	b := &fakeBackend{}
	b.script = []func(context.Context) (router.Target, error){b.target(up.URL)}
	h2 := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "h2 %d", r.ProtoMajor) })
	rt, err := router.New(router.Config{Functions: []*functions.Manifest{testFunction()}, Backend: b, Registry: prometheus.NewRegistry(), Logger: quietLogger(), HTTP2Handler: h2})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- rt.ServeTLS(ln, certFile, keyFile) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = rt.Shutdown(ctx)
		<-done
	}()
	url := "https://" + ln.Addr().String()
	h1 := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}} // no ForceAttemptHTTP2: HTTP/1.1
	resp, err := h1.Post(url+"/functions/echo", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 1 || proto != "https" {
		t.Fatalf("HTTP/1.1 over TLS: %d HTTP/%d, instance saw X-Forwarded-Proto %q", resp.StatusCode, resp.ProtoMajor, proto)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
	resp, err = (&http.Client{Transport: tr}).Get(url + "/anything")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(raw) != "h2 2" {
		t.Fatalf("ALPN h2 request answered %q (HTTP/%d), want the HTTP/2 handler", raw, resp.ProtoMajor)
	}
}

// TestMountAdmin: a handler mounted on the admin endpoints (the console)
// needs an admin key when keys are on, on the admin listener as elsewhere;
// one mounted for scrapers (/metrics) is open there.
func TestMountAdmin(t *testing.T) {
	client, ops := "pl_client-key-000000000000000000000000", "pl_ops-key-00000000000000000000000000000"
	keys, err := auth.Parse([]byte(fmt.Sprintf("keys:\n  - id: client\n    hash: %s\n    functions: [echo]\n  - id: ops\n    hash: %s\n    admin: true\n", auth.Sum(client), auth.Sum(ops))), "test")
	if err != nil {
		t.Fatal(err)
	}
	rt, err := router.New(router.Config{Functions: []*functions.Manifest{testFunction()}, Backend: &fakeBackend{}, Registry: prometheus.NewRegistry(),
		Logger: quietLogger(), Keys: keys, SeparateAdmin: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	rt.MountAdmin("/ui/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "console "+r.URL.Path) }))
	rt.MountMetrics("/metrics", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "# metrics\n") }))
	admin := httptest.NewServer(rt.AdminHandler())
	defer admin.Close()
	for _, tc := range []struct {
		key  string
		code int
	}{{"", 401}, {client, 403}, {ops, 200}} {
		req, _ := http.NewRequest("GET", admin.URL+"/ui/app.js", nil)
		if tc.key != "" {
			req.Header.Set("Authorization", "Bearer "+tc.key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || (tc.code == 200 && string(raw) != "console /ui/app.js") {
			t.Errorf("GET /ui/app.js with key %q: %d %q, want %d", tc.key, resp.StatusCode, raw, tc.code)
		}
	}
	resp, err := http.Get(admin.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/metrics on the admin listener: %d, want 200 without a key (open to scrapers)", resp.StatusCode)
	}
}

// TestFramedConnectionClosedByInstance: the router keeps framed
// connections between requests; when the instance closed its side (here:
// its frame server restarted on the same socket), the next request goes
// out on a new connection instead of failing, and the instance is not
// marked failed. A socket nobody listens on is unreachable (502 after the
// retry), with the instance released as failed.
func TestFramedConnectionClosedByInstance(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "instance.sock")
	var served atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { served.Add(1); fmt.Fprint(w, `{}`) })
	serveOn := func() (stop func()) { return serveFrames(t, sock, h) }
	stop := serveOn()
	up := upstream{base: "http://127.0.0.1:1", socket: sock}
	b := &fakeBackend{}
	b.script = append(b.script, b.targetAt(up), b.targetAt(up), b.targetAt(upstream{base: up.base, socket: sock + ".gone"}), b.targetAt(upstream{base: up.base, socket: sock + ".gone"}))
	f := startFake(t, b, 5*time.Second, nil)
	post := func() int {
		resp, err := http.Post(f.url+"/functions/echo", "application/json", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(); code != 200 {
		t.Fatalf("first request: %d", code)
	}
	stop() // closes the kept connection from the instance's side
	os.Remove(sock)
	stop = serveOn()
	defer stop()
	if code := post(); code != 200 {
		t.Fatalf("request after the instance closed the kept connection: %d, want 200 on a new connection", code)
	}
	if served.Load() != 2 {
		t.Errorf("instance served %d requests, want 2", served.Load())
	}
	if code := post(); code != http.StatusBadGateway {
		t.Errorf("a socket nobody listens on: %d, want 502", code)
	}
	if r := b.releases(); len(r) != 4 || r[0] || r[1] || !r[2] || !r[3] {
		t.Errorf("Release calls %v, want false, false, then true twice (unreachable, retried once)", r)
	}
}

// serveFrames stands in for an instance's framed socket at sock, answering
// with h; stop ends it and waits.
func serveFrames(t *testing.T, sock string, h http.Handler) (stop func()) {
	t.Helper()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	fs := &frame.Server{Handler: h, Limit: func() int { return 1 << 20 }, DrainTimeout: time.Second, Log: quietLogger()}
	go func() { fs.Serve(ctx, ln); close(done) }()
	return func() { cancel(); <-done }
}

// A framed request carries how long the router still waits: when the
// router answers 504 at its request timeout, the instance's handler sees
// its context end too (over HTTP the closed connection does that), so a
// request nobody waits for leaves the instance's batch queue.
func TestFramedRequestEndsWithTheRoutersTimeout(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "instance.sock")
	ended := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
		ended <- r.Context().Err()
		// As the runtime answers a request whose deadline passed; the
		// router's own 504 and this one race, and the client sees 504 either way.
		w.WriteHeader(http.StatusGatewayTimeout)
	})
	defer serveFrames(t, sock, h)()
	b := &fakeBackend{}
	b.script = append(b.script, b.targetAt(upstream{base: "http://127.0.0.1:1", socket: sock}))
	f := startFake(t, b, 200*time.Millisecond, nil)
	resp, err := http.Post(f.url+"/functions/echo", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("a request the instance holds past the router's timeout: %d, want 504", resp.StatusCode)
	}
	if err := <-ended; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the instance's request context after the router's 504: %v, want it ended by the relayed deadline", err)
	}
}
