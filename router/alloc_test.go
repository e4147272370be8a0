package router

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/frame"
	pb "github.com/pilotlight/pilotlight/proto/inference"
	"github.com/pilotlight/pilotlight/router/ratelimit"
)

// cannedUpstream answers every request on its connections with the same
// bytes and allocates nothing per request, so a benchmark's allocations
// are the router's own.
func cannedUpstream(b *testing.B) string {
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}")
	ln := cannedServer(b, "tcp", "127.0.0.1:0", resp, func() func(*bufio.Reader) error { return readHTTPRequest })
	return "http://" + ln.Addr().String()
}

// readHTTPRequest consumes one HTTP/1.1 request with a Content-Length body.
func readHTTPRequest(r *bufio.Reader) error {
	cl := -1
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 {
			break
		}
		const h = "Content-Length: "
		if len(line) > len(h) && string(line[:len(h)]) == h {
			cl, _ = strconv.Atoi(string(line[len(h) : len(line)-2]))
		}
	}
	if cl > 0 {
		_, err := r.Discard(cl)
		return err
	}
	return nil
}

// cannedFrameUpstream is cannedUpstream over a framed Unix socket.
func cannedFrameUpstream(b *testing.B) string {
	var enc frame.Encoder
	enc.StartResponse(200)
	enc.Header([]byte("Content-Type"), []byte("application/json"))
	resp, _ := enc.Finish([]byte(`{"ok":true}`))
	ln := cannedServer(b, "unix", filepath.Join(b.TempDir(), "canned.sock"), resp, func() func(*bufio.Reader) error {
		var buf []byte
		var req frame.Request
		return func(r *bufio.Reader) error { return frame.ReadRequest(r, &buf, 2<<20, &req) }
	})
	return ln.Addr().String()
}

// cannedServer answers each request a connection's reader (newReader, once
// per connection) consumes with resp.
func cannedServer(b *testing.B, network, addr string, resp []byte, newReader func() func(*bufio.Reader) error) net.Listener {
	ln, err := net.Listen(network, addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r, readOne := bufio.NewReaderSize(c, 64<<10), newReader()
				for readOne(r) == nil {
					if _, err := c.Write(resp); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln
}

// recordsNothing is a Recorder for a platform where no function records
// predictions: the data path must then cost nothing more.
type recordsNothing struct{}

func (recordsNothing) Records(string) bool   { return false }
func (recordsNothing) Record(PredictionCall) { panic("recorded a function that records nothing") }

type staticBackend struct{ t Target }

func (s staticBackend) Acquire(context.Context, string, string) (Target, error) { return s.t, nil }

// BenchmarkProxyAllocs reports the router's allocations per proxied
// request (the handler called in process, the upstream a canned server
// over HTTP or over a framed socket,
// the per-function concurrency cap on as serve has it, and an outcome
// store that records no function; no flag file);
// the body sizes show whether anything grows with the body.
func BenchmarkProxyAllocs(b *testing.B) {
	for _, c := range []struct {
		transport string
		size      int
	}{{"http", 200}, {"http", 64 << 10}, {"http", 512 << 10}, {"frames", 200}, {"frames", 64 << 10}, {"frames", 512 << 10}} {
		size := c.size
		b.Run(fmt.Sprintf("%s/body=%d", c.transport, size), func(b *testing.B) {
			target := Target{BaseURL: "http://127.0.0.1:1", Release: func(bool) {}}
			if c.transport == "frames" {
				target.Socket = cannedFrameUpstream(b)
			} else {
				target.BaseURL = cannedUpstream(b)
			}
			fn := &functions.Manifest{Name: "echo", Handler: "tensor", Revisions: []functions.Revision{{Name: "echo-00001"}},
				Runtime: functions.Runtime{MaxBodyBytes: 1 << 20}}
			rt, err := New(Config{Functions: []*functions.Manifest{fn}, Backend: staticBackend{target},
				Registry: prometheus.NewRegistry(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
				Concurrency: ratelimit.NewConcurrencyLimiter(ratelimit.ConcurrencyConfig{}), // as serve has it
				Recorder:    recordsNothing{}})
			if err != nil {
				b.Fatal(err)
			}
			defer rt.Close()
			body := make([]byte, size)
			for i := range body {
				body[i] = 'x'
			}
			var ctx fasthttp.RequestCtx
			ctx.Init2(&addrConn{remote: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}}, fastLogger{slog.Default()}, false)
			prepare := func() {
				ctx.Request.Reset()
				ctx.Response.Reset()
				ctx.Request.Header.SetMethod("POST")
				ctx.Request.SetRequestURI("/v2/models/echo/infer")
				ctx.Request.Header.SetHost("router")
				ctx.Request.Header.Set("Content-Type", "application/json")
				ctx.Request.SetBodyRaw(body)
			}
			prepare()
			rt.serveFast(&ctx)
			if ctx.Response.StatusCode() != 200 {
				b.Fatalf("status %d: %s", ctx.Response.StatusCode(), ctx.Response.Body())
			}
			b.ReportAllocs()
			b.SetBytes(int64(size))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				prepare()
				rt.serveFast(&ctx)
			}
		})
	}
}

// nativeStream is the server transport stream grpc-go puts in a call's
// context, for calling serveNative outside grpc-go; it keeps nothing.
type nativeStream struct{}

func (nativeStream) Method() string               { return grpcServicePath + "ModelInfer" }
func (nativeStream) SetHeader(metadata.MD) error  { return nil }
func (nativeStream) SendHeader(metadata.MD) error { return nil }
func (nativeStream) SetTrailer(metadata.MD) error { return nil }

// BenchmarkGRPCNativeAllocs reports the router's allocations and time per
// unary ModelInfer on grpc-go's transport (serveNative called in process,
// the transport itself not included), the instance a canned framed socket.
func BenchmarkGRPCNativeAllocs(b *testing.B) {
	var enc frame.Encoder
	enc.StartResponse(200)
	enc.HeaderString("Content-Type", "application/grpc")
	enc.HeaderString(frame.TrailerPrefix+"Grpc-Status", "0")
	reply := []byte{0, 0, 0, 0, 4, 10, 2, 'o', 'k'}
	resp, _ := enc.Finish(reply)
	ln := cannedServer(b, "unix", filepath.Join(b.TempDir(), "canned.sock"), resp, func() func(*bufio.Reader) error {
		var buf []byte
		var req frame.Request
		return func(r *bufio.Reader) error { return frame.ReadRequest(r, &buf, 2<<20, &req) }
	})
	fn := &functions.Manifest{Name: "echo", Handler: "tensor", Revisions: []functions.Revision{{Name: "echo-00001"}},
		Runtime: functions.Runtime{MaxBodyBytes: 1 << 20}}
	rt, err := New(Config{Functions: []*functions.Manifest{fn}, Backend: staticBackend{Target{Socket: ln.Addr().String(), Release: func(bool) {}}},
		Registry: prometheus.NewRegistry(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Concurrency: ratelimit.NewConcurrencyLimiter(ratelimit.ConcurrencyConfig{}), Recorder: recordsNothing{}})
	if err != nil {
		b.Fatal(err)
	}
	defer rt.Close()
	msg, err := proto.Marshal(&pb.ModelInferRequest{ModelName: "echo", Inputs: []*pb.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{1, 4}}}})
	if err != nil {
		b.Fatal(err)
	}
	ctx := grpc.NewContextWithServerTransportStream(metadata.NewIncomingContext(context.Background(),
		metadata.Pairs(":authority", "router", "content-type", "application/grpc", "user-agent", "grpc-go/1.85.0", "x-user-id", "u1")), nativeStream{})
	ctx = peer.NewContext(ctx, &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}})
	dec := func(v any) error { return passthroughCodec{}.Unmarshal(mem.BufferSlice{mem.SliceBuffer(msg)}, v) } // as grpc-go decodes
	call := func() {
		out, err := rt.grpc.serveNative(ctx, grpcServicePath+"ModelInfer", "model_name", dec)
		if err != nil {
			b.Fatal(err)
		}
		if m, ok := out.(*rawMessage); !ok || string(m.b) != string(reply[pb.FrameHeaderBytes:]) {
			b.Fatalf("answer %v, want the canned message", out)
		}
	}
	call()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		call()
	}
}
