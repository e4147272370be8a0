package router_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/frame"
	"github.com/pilotlight/pilotlight/internal/testbin"
	pb "github.com/pilotlight/pilotlight/proto/inference"
	"github.com/pilotlight/pilotlight/router"
	"github.com/pilotlight/pilotlight/router/auth"
	"github.com/pilotlight/pilotlight/router/ratelimit"
)

// recordingInstance is a stand-in instance (a grpc-go server over h2c) that
// records the metadata each call arrived with, so the test can see what
// the router forwards. The real instance is tested in runtime/server and
// end to end through pilotlight serve (cmd/pilotlight).
type recordingInstance struct {
	pb.UnimplementedGRPCInferenceServiceServer
	mu        sync.Mutex
	seen      []metadata.MD
	deadlines []time.Duration // how long each call had left when it arrived (0: no deadline)
}

func (ri *recordingInstance) ModelInfer(ctx context.Context, req *pb.ModelInferRequest) (*pb.ModelInferResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	var left time.Duration
	if d, ok := ctx.Deadline(); ok {
		left = time.Until(d)
	}
	ri.mu.Lock()
	ri.seen = append(ri.seen, md)
	ri.deadlines = append(ri.deadlines, left)
	ri.mu.Unlock()
	if req.Id == "fail" {
		return nil, status.Error(codes.InvalidArgument, "input \"x\": the instance refuses this")
	}
	_ = grpc.SetTrailer(ctx, metadata.Pairs("x-instance-trailer", "kept"))
	return &pb.ModelInferResponse{ModelName: req.ModelName, Id: req.Id, RawOutputContents: req.RawInputContents}, nil
}

func (ri *recordingInstance) last() metadata.MD {
	ri.mu.Lock()
	defer ri.mu.Unlock()
	return ri.seen[len(ri.seen)-1]
}

func (ri *recordingInstance) lastDeadline() time.Duration {
	ri.mu.Lock()
	defer ri.mu.Unlock()
	return ri.deadlines[len(ri.deadlines)-1]
}

// frameServer serves h on a framed Unix socket (package frame), as a local
// instance's runtime does beside its port.
func frameServer(t testing.TB, h http.Handler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "instance.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	fs := &frame.Server{Handler: h, Limit: func() int { return 1 << 20 }, DrainTimeout: time.Second, Log: quietLogger()}
	done := make(chan error, 1)
	go func() { done <- fs.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	return sock
}

// h2cServer serves h over h2c on a loopback port.
func h2cServer(t testing.TB, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// instanceBackend hands out the one instance (proxy_test.go's fakeBackend scripts many); cold says the first acquire of each revision waited.
type instanceBackend struct {
	addr   string
	socket string // the instance's framed socket ("": reach it over h2c, as a remote revision)
	mu     sync.Mutex
	warm   map[string]bool
	err    error
}

func (b *instanceBackend) Acquire(ctx context.Context, fn, rev string) (router.Target, error) {
	if b.err != nil {
		return router.Target{}, b.err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	cold := time.Duration(0)
	if !b.warm[rev] {
		b.warm[rev], cold = true, 5*time.Millisecond
	}
	return router.Target{BaseURL: "http://" + b.addr, Socket: b.socket, ColdStart: cold, Release: func(bool) {}}, nil
}

// transports are the two ways the router reaches an instance with a gRPC
// call: frames on a local instance's socket, h2c to a remote revision.
var transports = []string{"frames", "h2c"}

// grpcRouter is a router in front of one recording instance, reached
// over frames as serve's local instances are.
func grpcRouter(t *testing.T, mutate func(*router.Config)) (pb.GRPCInferenceServiceClient, *grpc.ClientConn, *recordingInstance, *instanceBackend) {
	return grpcRouterOver(t, "frames", mutate)
}

// grpcRouterOver is grpcRouter with the instance reached over transport
// ("frames" or "h2c"); the instance serves both.
func grpcRouterOver(t *testing.T, transport string, mutate func(*router.Config)) (pb.GRPCInferenceServiceClient, *grpc.ClientConn, *recordingInstance, *instanceBackend) {
	t.Helper()
	inst := &recordingInstance{}
	g := grpc.NewServer()
	pb.RegisterGRPCInferenceServiceServer(g, inst)
	c, conn, be := grpcRouterIn(t, transport, g, mutate)
	return c, conn, inst, be
}

// grpcRouterIn is a router in front of instance, an http.Handler answering
// gRPC, reached over transport.
func grpcRouterIn(t *testing.T, transport string, instance http.Handler, mutate func(*router.Config)) (pb.GRPCInferenceServiceClient, *grpc.ClientConn, *instanceBackend) {
	t.Helper()
	be := &instanceBackend{addr: h2cServer(t, instance), warm: map[string]bool{}}
	if transport == "frames" {
		be.socket = frameServer(t, instance)
	}
	fn := &functions.Manifest{Name: "m", Handler: "tensor", Revisions: []functions.Revision{{Name: "m-00001"}, {Name: "m-00002", Tag: "stable"}}}
	fn.Runtime.MaxBodyBytes = 1000
	other := &functions.Manifest{Name: "other", Handler: "tensor", Revisions: []functions.Revision{{Name: "other-00001"}}}
	other.Runtime.MaxBodyBytes = 1000
	rt := newRouter(t, router.Config{Functions: []*functions.Manifest{fn, other}, Backend: be, Registry: prometheus.NewRegistry(), Logger: quietLogger()}, mutate)
	addr := strings.TrimPrefix(serveRouter(t, rt), "http://")
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewGRPCInferenceServiceClient(conn), conn, be
}

// TestGRPCUnrelayableAnswerIsInternalToAll: an instance answer the router
// cannot relay (no grpc-status; OK without a message) reaches the client as
// Internal and is counted as one (HTTP 500), not as Unknown or OK.
func TestGRPCUnrelayableAnswerIsInternalToAll(t *testing.T) {
	answers := map[string]http.HandlerFunc{
		"no grpc-status": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/grpc")
			w.WriteHeader(http.StatusOK)
		},
		"OK without a message": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Trailer", "Grpc-Status")
			w.WriteHeader(http.StatusOK)
			w.Header().Set("Grpc-Status", "0")
		},
	}
	for _, transport := range transports {
		for name, h := range answers {
			t.Run(transport+"/"+name, func(t *testing.T) {
				reg := prometheus.NewRegistry()
				c, _, _ := grpcRouterIn(t, transport, h, func(cfg *router.Config) { cfg.Registry = reg })
				_, err := c.ModelInfer(context.Background(), &pb.ModelInferRequest{ModelName: "m"})
				if status.Code(err) != codes.Internal {
					t.Fatalf("the client got %v, want Internal", err)
				}
				for code, want := range map[string]float64{"500": 1, "200": 0} {
					if v := testbin.Metric(t, reg, "pilotlight_requests_total", map[string]string{"code": code}); v != want {
						t.Errorf("pilotlight_requests_total{code=%q} = %v, want %v", code, v, want)
					}
				}
			})
		}
	}
}

// TestGRPCProxyForwardsAndMarks: a call reaches the instance with its
// metadata but no credentials, within the router's timeout, and comes back
// with the instance's message, trailers and status, marked with the
// revision — over frames (local instances) and h2c (remote revisions) alike.
func TestGRPCProxyForwardsAndMarks(t *testing.T) {
	for _, transport := range transports {
		t.Run(transport, func(t *testing.T) { testGRPCProxyForwardsAndMarks(t, transport) })
	}
}

func testGRPCProxyForwardsAndMarks(t *testing.T, transport string) {
	const timeout = 7 * time.Second
	c, conn, inst, _ := grpcRouterOver(t, transport, func(cfg *router.Config) { cfg.RequestTimeout = timeout })
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-user-id", "u1", "authorization", "Bearer secret-key", "x-api-key", "secret-key")
	var hdr, trl metadata.MD
	req := &pb.ModelInferRequest{ModelName: "m", Id: "r1", RawInputContents: [][]byte{[]byte("tensor bytes pass untouched")},
		Inputs: []*pb.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{1}}}}
	resp, err := c.ModelInfer(ctx, req, grpc.Header(&hdr), grpc.Trailer(&trl))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Id != "r1" || string(resp.RawOutputContents[0]) != "tensor bytes pass untouched" {
		t.Errorf("response = %v", resp)
	}
	if got := hdr.Get("x-pilotlight-revision"); len(got) != 1 || got[0] != "m-00002" {
		t.Errorf("x-pilotlight-revision = %v, want the stable m-00002", got)
	}
	if len(hdr.Get("x-pilotlight-cold-start")) != 1 {
		t.Errorf("first call to a cold revision has no x-pilotlight-cold-start: %v", hdr)
	}
	if got := trl.Get("x-instance-trailer"); len(got) != 1 || got[0] != "kept" {
		t.Errorf("instance trailer lost: %v", trl)
	}
	md := inst.last()
	if len(md.Get("authorization")) != 0 || len(md.Get("x-api-key")) != 0 {
		t.Errorf("credentials reached the instance: %v", md)
	}
	if got := md.Get("x-user-id"); len(got) != 1 || got[0] != "u1" {
		t.Errorf("x-user-id not forwarded: %v", md)
	}
	if transport == "frames" {
		// The frame carries the router's timeout: the instance drops a
		// call the router stopped waiting for.
		if left := inst.lastDeadline(); left <= 0 || left > timeout {
			t.Errorf("the instance's deadline: %v left, want within the router's %v", left, timeout)
		}
	}
	// Warm now: no cold-start header.
	hdr = nil
	if _, err := c.ModelInfer(ctx, req, grpc.Header(&hdr)); err != nil {
		t.Fatal(err)
	}
	if len(hdr.Get("x-pilotlight-cold-start")) != 0 {
		t.Errorf("warm call carries x-pilotlight-cold-start: %v", hdr)
	}
	// An explicit version routes there.
	req.ModelVersion = "m-00001"
	hdr = nil
	if _, err := c.ModelInfer(ctx, req, grpc.Header(&hdr)); err != nil || hdr.Get("x-pilotlight-revision")[0] != "m-00001" {
		t.Errorf("model_version m-00001: %v %v", hdr, err)
	}
	// The instance's own refusal comes back with its code and message.
	req.Id = "fail"
	trl = nil
	_, err = c.ModelInfer(ctx, req, grpc.Trailer(&trl))
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "the instance refuses this") {
		t.Errorf("instance error: %v %q", st.Code(), st.Message())
	}
	if got := trl.Get("x-pilotlight-revision"); len(got) != 0 {
		t.Errorf("the revision header went out as a trailer: %v", trl)
	}
	// The router answers the model-less calls and reflection itself.
	if r, err := c.ServerLive(context.Background(), &pb.ServerLiveRequest{}); err != nil || !r.Live {
		t.Errorf("ServerLive: %v %v", r, err)
	}
	if r, err := c.ServerMetadata(context.Background(), &pb.ServerMetadataRequest{}); err != nil || r.Name != "pilotlight" {
		t.Errorf("ServerMetadata: %v %v", r, err)
	}
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}})
	lr, err := stream.Recv()
	if err != nil || !strings.Contains(lr.String(), "inference.GRPCInferenceService") {
		t.Errorf("reflection: %v %v", lr, err)
	}
	_ = stream.CloseSend()
}

func TestGRPCProxyRefusals(t *testing.T) {
	client, _ := auth.NewKey()
	keys, err := auth.Parse([]byte("keys:\n  - id: client\n    hash: "+auth.Sum(client)+"\n    functions: [m]\n    rate: {rps: 0.001, burst: 8}\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	c, conn, _, be := grpcRouter(t, func(cfg *router.Config) {
		cfg.Keys = keys
		cfg.RateLimit = ratelimit.New(ratelimit.Config{Registerer: reg})
	})
	with := func(md ...string) context.Context {
		return metadata.AppendToOutgoingContext(context.Background(), md...)
	}
	good := &pb.ModelInferRequest{ModelName: "m"}
	cases := []struct {
		name     string
		ctx      context.Context
		req      *pb.ModelInferRequest
		code     codes.Code
		mentions string
	}{
		{"no key", context.Background(), good, codes.Unauthenticated, "missing API key"},
		{"wrong key", with("authorization", "Bearer pl_wrong-key-000000000000000000000000000"), good, codes.Unauthenticated, "invalid API key"},
		{"not Bearer", with("authorization", "Basic abc"), good, codes.Unauthenticated, "Bearer"},
		{"function the key may not call", with("x-api-key", client), &pb.ModelInferRequest{ModelName: "other"}, codes.PermissionDenied, `may not call function "other"`},
		// A key limited to some functions cannot tell unknown from forbidden (as over REST).
		{"unknown function", with("x-api-key", client), &pb.ModelInferRequest{ModelName: "nope"}, codes.PermissionDenied, `may not call function "nope"`},
		{"unknown revision", with("x-api-key", client), &pb.ModelInferRequest{ModelName: "m", ModelVersion: "m-00009"}, codes.NotFound, `no revision "m-00009"`},
		{"no model name", with("x-api-key", client), &pb.ModelInferRequest{}, codes.InvalidArgument, "model_name is required"},
		{"over maxBodyBytes", with("x-api-key", client), &pb.ModelInferRequest{ModelName: "m", RawInputContents: [][]byte{make([]byte, 2000)}}, codes.ResourceExhausted, "larger than 1000 bytes"},
		{"good", with("authorization", "Bearer "+client), good, codes.OK, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.ModelInfer(tc.ctx, tc.req)
			if st := status.Convert(err); st.Code() != tc.code || !strings.Contains(st.Message(), tc.mentions) {
				t.Fatalf("%v %q, want %v mentioning %q", st.Code(), st.Message(), tc.code, tc.mentions)
			}
		})
	}
	// Malformed protobuf, sent as raw bytes.
	var out pb.ModelInferResponse
	forced := grpc.ForceCodec(rawCodec{})
	err = conn.Invoke(with("x-api-key", client), "/inference.GRPCInferenceService/ModelInfer", rawMsg{0x0a, 0xff}, &out, forced)
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "malformed") {
		t.Errorf("malformed: %v %q", st.Code(), st.Message())
	}
	// Shedding by the backend is Unavailable.
	be.err = statusErr{503}
	if _, err := c.ModelInfer(with("x-api-key", client), good); status.Code(err) != codes.Unavailable {
		t.Errorf("backend 503: %v, want Unavailable", err)
	}
	be.err = nil
	// The key's burst of 8 is spent by now (the calls above that authenticated): ResourceExhausted.
	var last error
	for i := 0; i < 10 && status.Code(last) != codes.ResourceExhausted; i++ {
		_, last = c.ModelInfer(with("x-api-key", client), good)
	}
	if st := status.Convert(last); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "rate limit") {
		t.Errorf("over the rate: %v %q, want ResourceExhausted", st.Code(), st.Message())
	}
	if v := testbin.Metric(t, reg, "pilotlight_ratelimit_rejected_requests_total", nil); v != 1 {
		t.Errorf("pilotlight_ratelimit_rejected_requests_total = %v, want 1", v)
	}
	// Public, as REST's /v2 and health paths are.
	if _, err := c.ServerReady(context.Background(), &pb.ServerReadyRequest{}); err != nil {
		t.Errorf("ServerReady without a key: %v", err)
	}
}

func TestGRPCConcurrencyCapIsUnavailable(t *testing.T) {
	reg := prometheus.NewRegistry()
	cl := ratelimit.NewConcurrencyLimiter(ratelimit.ConcurrencyConfig{Max: 1, Registerer: reg})
	c, _, _, _ := grpcRouter(t, func(cfg *router.Config) { cfg.Concurrency = cl })
	slot, r := cl.Enter("m")
	if r != nil {
		t.Fatal("no slot")
	}
	defer slot.Release()
	var hdr metadata.MD
	_, err := c.ModelInfer(context.Background(), &pb.ModelInferRequest{ModelName: "m"}, grpc.Header(&hdr))
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "in flight") {
		t.Fatalf("at the cap: %v %q", st.Code(), st.Message())
	}
	if got := hdr.Get(strings.ToLower(router.ShedHeader)); len(got) != 1 {
		t.Errorf("shed call not marked %s: %v", router.ShedHeader, hdr)
	}
	if v := testbin.Metric(t, reg, "pilotlight_concurrency_shed_requests_total", nil); v != 1 {
		t.Errorf("pilotlight_concurrency_shed_requests_total = %v, want 1", v)
	}
}

type rawMsg []byte

type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	if b, ok := v.(rawMsg); ok {
		return b, nil
	}
	return proto.Marshal(v.(proto.Message))
}
func (rawCodec) Unmarshal(b []byte, v any) error { return proto.Unmarshal(b, v.(proto.Message)) }
func (rawCodec) Name() string                    { return "proto" }

// TestGRPCOverTLSAndRESTOverHTTP2 checks the two other ways onto the one
// listener: gRPC over TLS (ALPN h2, as serve --tls-cert runs), and plain
// REST over h2c, which must still reach the REST routes.
func TestGRPCOverTLSAndRESTOverHTTP2(t *testing.T) {
	inst := &recordingInstance{}
	g := grpc.NewServer()
	pb.RegisterGRPCInferenceServiceServer(g, inst)
	be := &instanceBackend{addr: h2cServer(t, g), warm: map[string]bool{}}
	fn := &functions.Manifest{Name: "m", Handler: "tensor", Revisions: []functions.Revision{{Name: "m-00001"}}}
	fn.Runtime.MaxBodyBytes = 1000
	rt, err := router.New(router.Config{Functions: []*functions.Manifest{fn}, Backend: be, Registry: prometheus.NewRegistry(), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	h := rt.GRPCHandler(rt.Handler())

	ts := httptest.NewUnstartedServer(h)
	ts.EnableHTTP2 = true
	ts.StartTLS()
	defer ts.Close()
	pool := x509.NewCertPool()
	pool.AddCert(ts.Certificate())
	conn, err := grpc.NewClient(strings.TrimPrefix(ts.URL, "https://"), grpc.WithTransportCredentials(credentials.NewClientTLSFromCert(pool, "example.com")))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var hdr metadata.MD
	if _, err := pb.NewGRPCInferenceServiceClient(conn).ModelInfer(context.Background(), &pb.ModelInferRequest{ModelName: "m"}, grpc.Header(&hdr)); err != nil {
		t.Fatalf("gRPC over TLS: %v", err)
	}
	if got := hdr.Get("x-pilotlight-revision"); len(got) != 1 || got[0] != "m-00001" {
		t.Errorf("x-pilotlight-revision over TLS = %v", got)
	}

	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: &http.Transport{Protocols: &p}}
	resp, err := client.Get("http://" + h2cServer(t, h) + "/v2/health/ready")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Errorf("REST over h2c: %d over HTTP/%d", resp.StatusCode, resp.ProtoMajor)
	}
}

// TestGRPCFramesRetryOnceOnUnreachable: a local instance whose socket is
// gone (it exited between the acquire and the call) is reported failed,
// and the call is retried once on the next instance, as on REST.
func TestGRPCFramesRetryOnceOnUnreachable(t *testing.T) {
	inst := &recordingInstance{}
	g := grpc.NewServer()
	pb.RegisterGRPCInferenceServiceServer(g, inst)
	good := frameServer(t, g)
	gone := filepath.Join(t.TempDir(), "exited.sock")
	b := &fakeBackend{}
	b.script = append(b.script, b.targetAt(upstream{base: deadAddr(t), socket: gone}), b.targetAt(upstream{base: deadAddr(t), socket: good}),
		b.targetAt(upstream{base: deadAddr(t), socket: gone}), b.targetAt(upstream{base: deadAddr(t), socket: gone}))
	reg := prometheus.NewRegistry()
	rt := newRouter(t, router.Config{Functions: []*functions.Manifest{testFunction()}, Backend: b, Registry: reg, Logger: quietLogger()}, nil)
	conn, err := grpc.NewClient(strings.TrimPrefix(serveRouter(t, rt), "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := pb.NewGRPCInferenceServiceClient(conn)
	if _, err := c.ModelInfer(context.Background(), &pb.ModelInferRequest{ModelName: "echo", Id: "r1"}); err != nil {
		t.Fatalf("retried call: %v", err)
	}
	if got := testbin.Metric(t, reg, "pilotlight_router_retries_total", map[string]string{"function": "echo"}); got != 1 {
		t.Errorf("pilotlight_router_retries_total = %v, want 1", got)
	}
	_, err = c.ModelInfer(context.Background(), &pb.ModelInferRequest{ModelName: "echo", Id: "r2"})
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "unreachable twice") {
		t.Errorf("two unreachable instances: %v %q, want Unavailable", st.Code(), st.Message())
	}
	if got, want := b.releases(), []bool{true, false, true, true}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("releases %v, want %v (failed, served, failed, failed)", got, want)
	}
}

// TestGRPCHoldEndsAtTheDeadlineOrWhenTheClientLeaves: a call held for a
// cold start ends at the router's request timeout with DeadlineExceeded,
// and the hold ends as soon as the client gives up on the call.
func TestGRPCHoldEndsAtTheDeadlineOrWhenTheClientLeaves(t *testing.T) {
	ended := make(chan error, 2)
	hold := func(ctx context.Context) (router.Target, error) {
		<-ctx.Done()
		ended <- ctx.Err()
		return router.Target{}, ctx.Err()
	}
	b := &fakeBackend{script: []func(context.Context) (router.Target, error){hold, hold}}
	rt := newRouter(t, router.Config{Functions: []*functions.Manifest{testFunction()}, Backend: b, RequestTimeout: 300 * time.Millisecond,
		Registry: prometheus.NewRegistry(), Logger: quietLogger()}, nil)
	conn, err := grpc.NewClient(strings.TrimPrefix(serveRouter(t, rt), "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := pb.NewGRPCInferenceServiceClient(conn)
	start := time.Now()
	_, err = c.ModelInfer(context.Background(), &pb.ModelInferRequest{ModelName: "echo"})
	if st := status.Convert(err); st.Code() != codes.DeadlineExceeded || !strings.Contains(st.Message(), "within the request timeout") {
		t.Errorf("held past the request timeout: %v %q, want DeadlineExceeded", st.Code(), st.Message())
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 3*time.Second {
		t.Errorf("answered after %v, want about the 300ms request timeout", d)
	}
	<-ended
	rt2 := newRouter(t, router.Config{Functions: []*functions.Manifest{testFunction()}, Backend: b, RequestTimeout: time.Minute,
		Registry: prometheus.NewRegistry(), Logger: quietLogger()}, nil)
	conn2, err := grpc.NewClient(strings.TrimPrefix(serveRouter(t, rt2), "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := pb.NewGRPCInferenceServiceClient(conn2).ModelInfer(ctx, &pb.ModelInferRequest{ModelName: "echo"}); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("the client's own deadline: %v", err)
	}
	select {
	case err := <-ended:
		// The client's deadline travels as grpc-timeout: the hold ends at
		// it (or at the client's cancellation, whichever the router sees
		// first), not at the router's minute.
		if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("the hold ended with %v, want the client's deadline or cancellation", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the hold outlived the client's call")
	}
}

// TestH2cConnectionsReachTheirServer: on the router's own front door an
// h2c connection that opens with REST is served by net/http and one that
// opens with gRPC by grpc-go's transport; both keep their one connection
// across calls, so the SETTINGS the front door sends while it sniffs (and
// the client's acknowledgement of it, which it drops) end no connection.
func TestH2cConnectionsReachTheirServer(t *testing.T) {
	rt := newRouter(t, router.Config{Functions: []*functions.Manifest{testFunction()}, Backend: &fakeBackend{}, Registry: prometheus.NewRegistry(), Logger: quietLogger()}, nil)
	addr := strings.TrimPrefix(serveRouter(t, rt), "http://")
	var dials atomic.Int32
	dial := func(ctx context.Context, network, a string) (net.Conn, error) {
		dials.Add(1)
		return (&net.Dialer{}).DialContext(ctx, network, a)
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: &http.Transport{Protocols: &p, DialContext: dial}}
	for i := 0; i < 3; i++ {
		resp, err := client.Get("http://" + addr + "/v2/health/ready")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
			t.Fatalf("REST over h2c, call %d: %d over HTTP/%d", i, resp.StatusCode, resp.ProtoMajor)
		}
		time.Sleep(50 * time.Millisecond) // the acknowledgement arrives meanwhile
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("REST over h2c took %d connections for 3 calls, want 1", n)
	}
	dials.Store(0)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return dial(ctx, "tcp", a) }))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := pb.NewGRPCInferenceServiceClient(conn)
	for i := 0; i < 3; i++ {
		live, err := c.ServerLive(context.Background(), &pb.ServerLiveRequest{})
		if err != nil || !live.Live {
			t.Fatalf("ServerLive, call %d: %v %v", i, live, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("gRPC took %d connections for 3 calls, want 1", n)
	}
}
