package server_test

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/listener"
	"github.com/pilotlight/pilotlight/runtime/server"
)

// recordingListener keeps the server's end of every connection it
// accepts, and its priority (SO_PRIORITY) as of its close.
type recordingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []*prioConn
}

type prioConn struct {
	*net.TCPConn // its SyscallConn too: the server tags through it
	once         sync.Once
	closedPrio   int
}

func priority(c syscall.Conn) int {
	prio := -1
	if rc, err := c.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) {
			if v, err := syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PRIORITY); err == nil {
				prio = v
			}
		})
	}
	return prio
}

func (c *prioConn) Close() error {
	c.once.Do(func() { c.closedPrio = priority(c.TCPConn) })
	return c.TCPConn.Close()
}

func (l *recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	pc := &prioConn{TCPConn: c.(*net.TCPConn), closedPrio: -1}
	l.mu.Lock()
	l.conns = append(l.conns, pc)
	l.mu.Unlock()
	return pc, nil
}

// last is the priority of the newest accepted connection (as of its close
// when closed).
func (l *recordingListener) last(t *testing.T) int {
	t.Helper()
	l.mu.Lock()
	c := l.conns[len(l.conns)-1]
	l.mu.Unlock()
	prio := priority(c.TCPConn)
	if prio < 0 {
		c.once.Do(func() {}) // closed: Close read it
		prio = c.closedPrio
	}
	if prio < 0 {
		t.Fatal("could not read the connection's priority")
	}
	return prio
}

// TestColdStartTags: in a Knative pod the runtime tags the connection of
// its first ready answer and of its first request (not a probe's) with the
// socket priorities the node agent's probes read; the ones before, after
// and between keep the default.
func TestColdStartTags(t *testing.T) {
	requireORT(t)
	m, err := functions.LoadDir(filepath.Join(repoRoot(t), "functions", "example-tensor"))
	if err != nil {
		t.Fatal(err)
	}
	s := server.New(server.Config{Registry: prometheus.NewRegistry(), TagColdStart: true})
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &recordingListener{Listener: inner}
	serveUntilCleanup(t, s, ln, nil)
	base := "http://" + inner.Addr().String()
	// As queue-proxy probes: HTTP/1.1, a connection per probe.
	h1 := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	var h2Protocols http.Protocols
	h2Protocols.SetUnencryptedHTTP2(true)
	h2 := func() *http.Client { return &http.Client{Transport: &http.Transport{Protocols: &h2Protocols}} }
	body := `{"inputs":[{"name":"input_vectors","shape":[1,10],"datatype":"FP32","data":` + vec(1, 1) + `}]}`
	step := func(name string, c *http.Client, method, path string, wantCode, wantPrio int) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		if method == http.MethodGet {
			req, _ = http.NewRequest(method, base+path, nil)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		resp.Body.Close()
		if resp.StatusCode != wantCode {
			t.Fatalf("%s: status %d, want %d", name, resp.StatusCode, wantCode)
		}
		if got := ln.last(t); got != wantPrio {
			t.Fatalf("%s: connection priority %d, want %d", name, got, wantPrio)
		}
	}
	step("readiness probe before load", h1, http.MethodGet, "/v2/health/ready", http.StatusServiceUnavailable, 0)
	if err := s.Load(context.Background(), m, m.Revisions[0].Name); err != nil {
		t.Fatal(err)
	}
	step("liveness probe", h1, http.MethodGet, "/v2/health/live", http.StatusOK, 0)
	step("first ready answer", h1, http.MethodGet, "/v2/health/ready", http.StatusOK, listener.ReadyPriority)
	step("second ready answer", h1, http.MethodGet, "/v2/health/ready", http.StatusOK, 0)
	step("metrics scrape", h1, http.MethodGet, "/metrics", http.StatusOK, 0)
	infer := "/v2/models/" + m.Name + "/infer"
	step("first request (h2c)", h2(), http.MethodPost, infer, http.StatusOK, listener.RequestPriority)
	step("second request (h2c)", h2(), http.MethodPost, infer, http.StatusOK, 0)
}
