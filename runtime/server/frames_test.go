package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/frame"
	"github.com/pilotlight/pilotlight/internal/testbin"
)

// frameClient sends request frames on one connection to an instance's socket.
type frameClient struct {
	c   net.Conn
	br  *bufio.Reader
	enc frame.Encoder
	buf []byte
}

func (fc *frameClient) do(t *testing.T, method, uri, body string) (int, http.Header, []byte, error) {
	t.Helper()
	fc.enc.StartRequest("", []byte(method), []byte(uri), 0)
	fc.enc.Header([]byte("Content-Type"), []byte("application/json"))
	f, err := fc.enc.Finish([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fc.c.Write(f); err != nil {
		return 0, nil, nil, err
	}
	var h frame.ResponseHead
	if err := frame.ReadResponseHead(fc.br, &fc.buf, 64<<10, &h); err != nil {
		return 0, nil, nil, err
	}
	hdr := http.Header{}
	for _, hd := range h.Headers {
		hdr.Add(string(hd.Name), string(hd.Value))
	}
	b := make([]byte, h.Body)
	_, err = io.ReadFull(fc.br, b)
	return h.Status, hdr, b, err
}

// TestFramesServeAsHTTP: a framed request gets the answer the same request
// gets over HTTP — inference, unknown model, body over the function's
// limit, metrics — and a frame over the frame limit closes the connection.
// During drain a frame in flight is answered before Serve returns.
func TestFramesServeAsHTTP(t *testing.T) {
	s, ts, reg := loaded(t, func(m *functions.Manifest) { m.Runtime.MaxBodyBytes = 4 << 10 })
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	s.Handler().(*echo.Echo).Use(func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			if c.Request().Header.Get("X-Hold") != "" {
				entered <- struct{}{}
				<-release
			}
			return next(c)
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "i.sock")
	uln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln, uln) }()
	dial := func() *frameClient {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return &frameClient{c: c, br: bufio.NewReader(c)}
	}
	fc := dial()
	infer := `{"inputs":[{"name":"input_vectors","shape":[1,10],"datatype":"FP32","data":` + vec(1, 1) + `}]}`
	cases := []struct {
		name, method, uri, body string
	}{
		{"infer", "POST", "/v2/models/example-tensor/infer", infer},
		{"unknown model", "POST", "/v2/models/nope/infer", infer},
		{"body over maxBodyBytes", "POST", "/v2/models/example-tensor/infer", strings.Repeat(" ", 5<<10) + infer},
		{"metadata", "GET", "/v2/models/example-tensor", ""},
		{"no such route", "GET", "/nowhere?x=1", ""},
	}
	for _, c := range cases {
		code, hdr, body, err := fc.do(t, c.method, c.uri, c.body)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		req, _ := http.NewRequest(c.method, ts.URL+c.uri, strings.NewReader(c.body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if code != resp.StatusCode || string(body) != string(want) || hdr.Get("Content-Type") != resp.Header.Get("Content-Type") {
			t.Errorf("%s: framed %d %q %q; HTTP %d %q %q", c.name, code, hdr.Get("Content-Type"), body, resp.StatusCode, resp.Header.Get("Content-Type"), want)
		}
		if code >= 400 {
			var e map[string]string
			if json.Unmarshal(body, &e) != nil || e["error"] == "" {
				t.Errorf("%s: error answer %q is not {\"error\": ...}", c.name, body)
			}
		}
	}
	// Both inference requests (framed and HTTP) are counted alike.
	if n := testbin.Metric(t, reg, "pilotlight_runtime_requests_total", map[string]string{"route": "infer", "code": "200"}); n != 2 {
		t.Errorf("pilotlight_runtime_requests_total{route=infer,code=200} = %v, want 2 (one framed, one HTTP)", n)
	}

	// A frame over the frame limit (body limit + 128 KiB) closes the connection.
	big := dial()
	if _, _, _, err := big.do(t, "POST", "/v2/models/example-tensor/infer", strings.Repeat(" ", 200<<10)); err == nil {
		t.Error("a frame over the limit was answered; want the connection closed")
	}

	// Drain: a frame in flight is answered, then Serve returns.
	held := dial()
	answered := make(chan int, 1)
	go func() {
		held.enc.StartRequest("", []byte("POST"), []byte("/v2/models/example-tensor/infer"), 0)
		held.enc.Header([]byte("X-Hold"), []byte("1"))
		f, _ := held.enc.Finish([]byte(infer))
		held.c.Write(f)
		var h frame.ResponseHead
		if err := frame.ReadResponseHead(held.br, &held.buf, 64<<10, &h); err != nil {
			answered <- -1
			return
		}
		answered <- h.Status
	}()
	<-entered
	cancel()
	waitDraining(t, ts.URL)
	close(release)
	if code := <-answered; code != 200 {
		t.Fatalf("frame in flight during drain: %d, want 200", code)
	}
	if err := <-served; err != nil {
		t.Fatalf("serve: %v", err)
	}
	if _, err := net.Dial("unix", sock); err == nil {
		t.Error("still accepting framed connections after drain")
	}
}
