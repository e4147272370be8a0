package server_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/testbin"
	pb "github.com/pilotlight/pilotlight/proto/inference"
	"github.com/pilotlight/pilotlight/runtime/server"
)

// servedInstance runs the example-tensor revision on a real listener
// (Serve: HTTP/1.1 and h2c on one port) and dials it with grpc-go.
func servedInstance(t *testing.T, mutate func(*functions.Manifest)) (addr string, client pb.GRPCInferenceServiceClient, conn *grpc.ClientConn, reg *prometheus.Registry) {
	t.Helper()
	s, reg := loadExample(t, mutate)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveUntilCleanup(t, s, ln, nil)
	conn, err = grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return ln.Addr().String(), pb.NewGRPCInferenceServiceClient(conn), conn, reg
}

func fp32Input(rows int, v float32) *pb.ModelInferRequest_InferInputTensor {
	data := make([]float32, rows*10)
	for i := range data {
		data[i] = v + float32(i)/100
	}
	return &pb.ModelInferRequest_InferInputTensor{Name: "input_vectors", Datatype: "FP32", Shape: []int64{int64(rows), 10},
		Contents: &pb.InferTensorContents{Fp32Contents: data}}
}

// restInfer posts the same request as JSON on the same port and returns
// the status and the decoded body.
func restInfer(t *testing.T, addr, path string, body []byte) (int, map[string]any) {
	t.Helper()
	return do(t, http.MethodPost, "http://"+addr+path, string(body))
}

// restBody is req as the V2 REST JSON body.
func restBody(req *pb.ModelInferRequest) []byte {
	type input struct {
		Name     string  `json:"name"`
		Shape    []int64 `json:"shape"`
		Datatype string  `json:"datatype"`
		Data     any     `json:"data"`
	}
	type output struct {
		Name string `json:"name"`
	}
	body := struct {
		ID      string   `json:"id,omitempty"`
		Inputs  []input  `json:"inputs"`
		Outputs []output `json:"outputs,omitempty"`
	}{ID: req.Id, Inputs: []input{}}
	for _, in := range req.Inputs {
		var data any = []float32{}
		if c := in.Contents; c != nil {
			switch {
			case len(c.Fp32Contents) > 0:
				data = c.Fp32Contents
			case len(c.Int64Contents) > 0:
				data = c.Int64Contents
			}
		}
		body.Inputs = append(body.Inputs, input{in.Name, in.Shape, in.Datatype, data})
	}
	for _, o := range req.Outputs {
		body.Outputs = append(body.Outputs, output{o.Name})
	}
	b, _ := json.Marshal(body)
	return b
}

func TestGRPCOnTheRESTPort(t *testing.T) {
	addr, c, conn, reg := servedInstance(t, nil)
	ctx := context.Background()
	if r, err := c.ServerLive(ctx, &pb.ServerLiveRequest{}); err != nil || !r.Live {
		t.Fatalf("ServerLive = %v, %v", r, err)
	}
	if r, err := c.ServerReady(ctx, &pb.ServerReadyRequest{}); err != nil || !r.Ready {
		t.Fatalf("ServerReady = %v, %v", r, err)
	}
	if r, err := c.ModelReady(ctx, &pb.ModelReadyRequest{Name: "example-tensor"}); err != nil || !r.Ready {
		t.Fatalf("ModelReady = %v, %v", r, err)
	}
	if r, err := c.ServerMetadata(ctx, &pb.ServerMetadataRequest{}); err != nil || r.Name != "pilotlight" {
		t.Fatalf("ServerMetadata = %v, %v", r, err)
	}
	md, err := c.ModelMetadata(ctx, &pb.ModelMetadataRequest{Name: "example-tensor"})
	if err != nil {
		t.Fatal(err)
	}
	if len(md.Inputs) != 1 || md.Inputs[0].Name != "input_vectors" || md.Inputs[0].Datatype != "FP32" || fmt.Sprint(md.Inputs[0].Shape) != "[-1 10]" ||
		fmt.Sprint(md.Versions) != "[example-tensor-00001]" || md.Platform != "onnxruntime_onnx" {
		t.Errorf("ModelMetadata = %v", md)
	}

	// Typed contents: the same numbers REST gives for the same request, on the same port.
	req := &pb.ModelInferRequest{ModelName: "example-tensor", Id: "req-7", Inputs: []*pb.ModelInferRequest_InferInputTensor{fp32Input(3, 0.5)}}
	typed, err := c.ModelInfer(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if typed.Id != "req-7" || typed.ModelVersion != "example-tensor-00001" || len(typed.Outputs) != 1 || len(typed.RawOutputContents) != 0 {
		t.Fatalf("typed response = %v", typed)
	}
	out := typed.Outputs[0]
	if out.Name != "output_scalars" || out.Datatype != "FP32" || fmt.Sprint(out.Shape) != "[3]" || len(out.Contents.GetFp32Contents()) != 3 {
		t.Fatalf("typed output = %v", out)
	}
	code, rest := restInfer(t, addr, "/v2/models/example-tensor/infer", restBody(req))
	if code != 200 {
		t.Fatalf("REST on the gRPC port: %d %v", code, rest)
	}
	restData := rest["outputs"].([]any)[0].(map[string]any)["data"].([]any)
	for i, v := range out.Contents.Fp32Contents {
		if float32(restData[i].(float64)) != v {
			t.Errorf("output %d: gRPC %v, REST %v", i, v, restData[i])
		}
	}

	// Raw contents in, raw contents out, the same numbers.
	raw := &pb.ModelInferRequest{ModelName: "example-tensor", ModelVersion: "example-tensor-00001",
		Inputs:  []*pb.ModelInferRequest_InferInputTensor{{Name: "input_vectors", Datatype: "FP32", Shape: []int64{3, 10}}},
		Outputs: []*pb.ModelInferRequest_InferRequestedOutputTensor{{Name: "output_scalars"}}}
	var rb []byte
	for _, v := range req.Inputs[0].Contents.Fp32Contents {
		rb = binary.LittleEndian.AppendUint32(rb, math.Float32bits(v))
	}
	raw.RawInputContents = [][]byte{rb}
	rawResp, err := c.ModelInfer(ctx, raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(rawResp.RawOutputContents) != 1 || rawResp.Outputs[0].Contents != nil || len(rawResp.RawOutputContents[0]) != 3*4 {
		t.Fatalf("raw response = %v", rawResp)
	}
	for i, v := range out.Contents.Fp32Contents {
		if got := math.Float32frombits(binary.LittleEndian.Uint32(rawResp.RawOutputContents[0][4*i:])); got != v {
			t.Errorf("raw output %d = %v, typed %v", i, got, v)
		}
	}

	// REST over h2c on the same connection grpc-go opened is beside the
	// point; over a plain HTTP/2 client it must work too (Knative's h2c port).
	h2c := &http.Client{Transport: &http.Transport{Protocols: h2cOnly()}}
	resp, err := h2c.Get("http://" + addr + "/v2/health/ready")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	h2c.CloseIdleConnections()
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Errorf("REST over h2c: %d, HTTP/%d", resp.StatusCode, resp.ProtoMajor)
	}

	// Reflection lists the service, so grpcurl needs no proto file.
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	lr, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(fmt.Sprint(lr.GetListServicesResponse().GetService()), "inference.GRPCInferenceService") {
		t.Errorf("reflection lists %v", lr.GetListServicesResponse())
	}
	_ = stream.CloseSend()

	if got := testbin.Metric(t, reg, "pilotlight_runtime_requests_total", map[string]string{"route": "grpc", "code": "200"}); got != 2 {
		t.Errorf("pilotlight_runtime_requests_total{route=grpc,code=200} = %v, want 2", got)
	}
}

func h2cOnly() *http.Protocols {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &p
}

// rawBytes sends its bytes as the request message unchanged, so tests can
// send what no generated client would.
type rawBytes []byte

type rawClientCodec struct{ encoding.CodecV2 }

func (c rawClientCodec) Marshal(v any) (mem.BufferSlice, error) {
	if b, ok := v.(rawBytes); ok {
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	return c.CodecV2.Marshal(v)
}

func TestGRPCBadInputGivesRESTsMessageWithACode(t *testing.T) {
	addr, c, conn, reg := servedInstance(t, func(m *functions.Manifest) { m.Runtime.MaxBodyBytes = 4096; m.Runtime.MaxRequestRows = 4 })
	ctx := context.Background()
	in := func(mut func(*pb.ModelInferRequest_InferInputTensor)) *pb.ModelInferRequest {
		i := fp32Input(1, 1)
		if mut != nil {
			mut(i)
		}
		return &pb.ModelInferRequest{ModelName: "example-tensor", Inputs: []*pb.ModelInferRequest_InferInputTensor{i}}
	}
	cases := []struct {
		name     string
		req      *pb.ModelInferRequest
		code     codes.Code
		mentions string
		restPath string // "": the request's own model path; "-": no REST twin
	}{
		{"unknown model", &pb.ModelInferRequest{ModelName: "nope", Inputs: in(nil).Inputs}, codes.NotFound, "nope", "/v2/models/nope/infer"},
		{"unknown version", &pb.ModelInferRequest{ModelName: "example-tensor", ModelVersion: "example-tensor-00009", Inputs: in(nil).Inputs}, codes.NotFound, "example-tensor-00009", "/v2/models/example-tensor/versions/example-tensor-00009/infer"},
		{"wrong tensor name", in(func(i *pb.ModelInferRequest_InferInputTensor) { i.Name = "x" }), codes.InvalidArgument, `"x"`, ""},
		{"unknown datatype", in(func(i *pb.ModelInferRequest_InferInputTensor) { i.Datatype = "FP8" }), codes.InvalidArgument, "datatype", ""},
		{"wrong rank", in(func(i *pb.ModelInferRequest_InferInputTensor) { i.Shape = []int64{10} }), codes.InvalidArgument, "dimensions", ""},
		{"wrong fixed dim", in(func(i *pb.ModelInferRequest_InferInputTensor) { i.Shape = []int64{1, 9} }), codes.InvalidArgument, "dimension 1", ""},
		{"negative dim", in(func(i *pb.ModelInferRequest_InferInputTensor) { i.Shape = []int64{-1, 10} }), codes.InvalidArgument, ">= 0", ""},
		{"huge shape", in(func(i *pb.ModelInferRequest_InferInputTensor) { i.Shape = []int64{100000000000, 10} }), codes.InvalidArgument, "too large", ""},
		{"data shorter than shape", in(func(i *pb.ModelInferRequest_InferInputTensor) { i.Shape = []int64{2, 10} }), codes.InvalidArgument, "shape needs 20", ""},
		{"no inputs", &pb.ModelInferRequest{ModelName: "example-tensor"}, codes.InvalidArgument, "no inputs", ""},
		{"unknown output", &pb.ModelInferRequest{ModelName: "example-tensor", Inputs: in(nil).Inputs, Outputs: []*pb.ModelInferRequest_InferRequestedOutputTensor{{Name: "zzz"}}}, codes.InvalidArgument, "zzz", ""},
		{"more rows than maxRequestRows", &pb.ModelInferRequest{ModelName: "example-tensor", Inputs: []*pb.ModelInferRequest_InferInputTensor{fp32Input(5, 1)}}, codes.ResourceExhausted, "maxRequestRows", ""},
		{"message over maxBodyBytes", &pb.ModelInferRequest{ModelName: "example-tensor", Inputs: []*pb.ModelInferRequest_InferInputTensor{fp32Input(200, 1)}}, codes.ResourceExhausted, "larger than 4096", ""},
		// No REST twin: these exist only in protobuf.
		{"NaN in fp32_contents", in(func(i *pb.ModelInferRequest_InferInputTensor) { i.Contents.Fp32Contents[3] = float32(math.NaN()) }), codes.InvalidArgument, "finite", "-"},
		{"contents in the wrong field", in(func(i *pb.ModelInferRequest_InferInputTensor) {
			i.Contents = &pb.InferTensorContents{Fp64Contents: make([]float64, 10)}
		}), codes.InvalidArgument, "fp32_contents", "-"},
		{"no contents", in(func(i *pb.ModelInferRequest_InferInputTensor) { i.Contents = nil }), codes.InvalidArgument, "contents are required", "-"},
		{"raw bytes shorter than shape", func() *pb.ModelInferRequest {
			r := in(func(i *pb.ModelInferRequest_InferInputTensor) { i.Contents = nil })
			r.RawInputContents = [][]byte{make([]byte, 39)}
			return r
		}(), codes.InvalidArgument, "raw contents are 39 bytes; FP32 with 10 values needs 40", "-"},
		{"raw and typed together", func() *pb.ModelInferRequest {
			r := in(nil)
			r.RawInputContents = [][]byte{make([]byte, 40)}
			return r
		}(), codes.InvalidArgument, "both contents and raw_input_contents", "-"},
		{"raw for fewer inputs", func() *pb.ModelInferRequest {
			r := in(func(i *pb.ModelInferRequest_InferInputTensor) { i.Contents = nil })
			r.RawInputContents = [][]byte{make([]byte, 40), make([]byte, 40)}
			return r
		}(), codes.InvalidArgument, "2 entries for 1 inputs", "-"},
		{"no model name", &pb.ModelInferRequest{Inputs: in(nil).Inputs}, codes.InvalidArgument, "model_name", "-"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.ModelInfer(ctx, tc.req)
			st := status.Convert(err)
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.mentions) {
				t.Fatalf("status %v %q, want %v mentioning %q", st.Code(), st.Message(), tc.code, tc.mentions)
			}
			if tc.restPath == "-" {
				return
			}
			path := tc.restPath
			if path == "" {
				path = "/v2/models/example-tensor/infer"
			}
			code, out := restInfer(t, addr, path, restBody(tc.req))
			if pb.CodeForHTTP(code) != tc.code && !(code == 400 && tc.code == codes.ResourceExhausted) {
				t.Errorf("REST answers %d for the same request, gRPC %v", code, tc.code)
			}
			if out["error"] != st.Message() && !strings.HasPrefix(tc.name, "message over") {
				t.Errorf("messages differ:\n gRPC %q\n REST %q", st.Message(), out["error"])
			}
		})
	}

	// Bytes that are no protobuf at all.
	forced := grpc.ForceCodecV2(rawClientCodec{encoding.GetCodecV2("proto")})
	for name, b := range map[string][]byte{
		"truncated varint": {0x0a, 0xff},
		"bad wire type":    {0x0e, 1, 2, 3, 4},
		"length past end":  {0x2a, 0x7f, 0x0a},
	} {
		var resp pb.ModelInferResponse
		err := conn.Invoke(ctx, "/inference.GRPCInferenceService/ModelInfer", rawBytes(b), &resp, forced)
		if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "malformed infer request") {
			t.Errorf("%s: %v %q, want InvalidArgument malformed", name, st.Code(), st.Message())
		}
	}
	var ready pb.ModelReadyResponse
	if err := conn.Invoke(ctx, "/inference.GRPCInferenceService/ModelReady", rawBytes{0x0a, 0xff}, &ready, forced); status.Code(err) != codes.InvalidArgument {
		t.Errorf("malformed ModelReady: %v, want InvalidArgument", err)
	}

	// Nothing broke: a good call still works, and refusals were counted.
	if _, err := c.ModelInfer(ctx, in(nil)); err != nil {
		t.Fatalf("after bad input: %v", err)
	}
	if got := testbin.Metric(t, reg, "pilotlight_runtime_requests_total", map[string]string{"route": "grpc", "code": "400"}); got < 10 {
		t.Errorf("refused gRPC calls counted as code 400: %v", got)
	}
	if got := testbin.Metric(t, reg, "pilotlight_runtime_requests_total", map[string]string{"route": "grpc", "code": "429"}); got != 2 {
		t.Errorf("ResourceExhausted gRPC calls counted as code 429: %v, want 2", got)
	}
}

func TestGRPCModelNotReadyIsUnavailable(t *testing.T) {
	requireORT(t)
	s := server.New(server.Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = s.Serve(ctx, ln, nil) }()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := pb.NewGRPCInferenceServiceClient(conn)
	if r, err := c.ServerReady(ctx, &pb.ServerReadyRequest{}); err != nil || r.Ready {
		t.Errorf("ServerReady before load = %v, %v; want ready false", r, err)
	}
	if r, err := c.ModelReady(ctx, &pb.ModelReadyRequest{Name: "example-tensor"}); err != nil || r.Ready {
		t.Errorf("ModelReady before load = %v, %v; want ready false", r, err)
	}
	_, err = c.ModelInfer(ctx, &pb.ModelInferRequest{ModelName: "example-tensor", Inputs: []*pb.ModelInferRequest_InferInputTensor{fp32Input(1, 1)}})
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "no revision loaded yet") {
		t.Errorf("ModelInfer before load: %v %q, want Unavailable", st.Code(), st.Message())
	}
}

// serveUntilCleanup runs s on ln (and on uln, the router's framed socket,
// when not nil) until the test ends, and fails the test if Serve does.
func serveUntilCleanup(t testing.TB, s *server.Server, ln, uln net.Listener) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln, uln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
}
