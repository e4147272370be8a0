package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/pilotlight/pilotlight/functions"
	pb "github.com/pilotlight/pilotlight/proto/inference"
	"github.com/pilotlight/pilotlight/runtime/batch"
	"github.com/pilotlight/pilotlight/runtime/instance"
	"github.com/pilotlight/pilotlight/runtime/ort"
)

// The instance's gRPC face: the Open Inference Protocol's
// inference.GRPCInferenceService, on the same port as REST. Serve's
// http.Server speaks HTTP/1.1 and h2c on one listener; echo's first step
// sends gRPC calls to serveGRPC, which answers ModelInfer itself
// (serveInfer) and hands the other calls to grpc-go (its ServeHTTP: the
// model-less methods, reflection); everything else, REST over HTTP/2
// included, goes on through echo. ModelInfer reuses the REST path's rules
// (inputChecker, resolve, checkRows), batcher, pool, limits and metrics.

// grpcRoute is the route label of gRPC ModelInfer calls in pilotlight_runtime_requests_total.
const grpcRoute = "grpc"

// grpcServicePrefix is the path prefix of the inference service's methods.
var grpcServicePrefix = "/" + pb.GRPCInferenceService_ServiceDesc.ServiceName + "/"

// rawMessage is a request grpc-go hands over undecoded, so a malformed
// protobuf is the caller's InvalidArgument, not grpc-go's Internal.
type rawMessage struct{ b []byte }

// rawCodec is grpc-go's proto codec, except that a *rawMessage receives
// the message's bytes as they came.
type rawCodec struct{ encoding.CodecV2 }

func (c rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if r, ok := v.(*rawMessage); ok {
		r.b = data.Materialize()
		return nil
	}
	return c.CodecV2.Unmarshal(data, v)
}

// newGRPC builds the gRPC server; maxMessageBytes bounds every message
// grpc-go reads (the body limit in force; serveGRPC answers the inference
// calls' oversize messages first, with REST's message).
func (s *Server) newGRPC(maxMessageBytes int64) *grpc.Server {
	g := grpc.NewServer(
		grpc.ForceServerCodecV2(rawCodec{encoding.GetCodecV2(protocodec.Name)}),
		grpc.MaxRecvMsgSize(int(min(maxMessageBytes+pb.FrameHeaderBytes, 1<<31-1))),
	)
	desc := pb.GRPCInferenceService_ServiceDesc
	desc.Methods = []grpc.MethodDesc{
		unary("ServerLive", func(ctx context.Context, _ *pb.ServerLiveRequest) (*pb.ServerLiveResponse, error) {
			return &pb.ServerLiveResponse{Live: true}, nil
		}),
		unary("ServerReady", func(ctx context.Context, _ *pb.ServerReadyRequest) (*pb.ServerReadyResponse, error) {
			return &pb.ServerReadyResponse{Ready: !s.draining.Load() && (s.shared.Load() || len(s.revisions().order) > 0)}, nil
		}),
		unary("ModelReady", s.grpcModelReady),
		unary("ServerMetadata", func(ctx context.Context, _ *pb.ServerMetadataRequest) (*pb.ServerMetadataResponse, error) {
			return &pb.ServerMetadataResponse{Name: "pilotlight", Version: Version, Extensions: []string{}}, nil
		}),
		unary("ModelMetadata", s.grpcModelMetadata),
		// Served by serveInfer on the hot path; registered so reflection and
		// grpc-go callers (tests embedding the server) see the whole service.
		{MethodName: "ModelInfer", Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var raw rawMessage
			if err := dec(&raw); err != nil {
				return nil, err
			}
			return s.grpcInfer(ctx, raw.b)
		}},
	}
	g.RegisterService(&desc, pb.UnimplementedGRPCInferenceServiceServer{})
	reflection.Register(g)
	return g
}

// unary makes a method whose request is unmarshalled here, so a malformed
// one is InvalidArgument.
func unary[Req any, PReq interface {
	*Req
	proto.Message
}, Resp proto.Message](name string, call func(context.Context, PReq) (Resp, error)) grpc.MethodDesc {
	return grpc.MethodDesc{MethodName: name, Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
		var raw rawMessage
		if err := dec(&raw); err != nil {
			return nil, err
		}
		req := PReq(new(Req))
		if err := proto.Unmarshal(raw.b, req); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "malformed %s request: %v", name, err)
		}
		return call(ctx, req)
	}}
}

// serveGRPC answers a gRPC call: ModelInfer itself, the rest through grpc-go.
func (s *Server) serveGRPC(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == grpcServicePrefix+"ModelInfer" {
		s.serveInfer(w, r)
		return
	}
	if strings.HasPrefix(r.URL.Path, grpcServicePrefix) {
		// Read the message's length before grpc-go does, so an oversize
		// message gets REST's answer, in ResourceExhausted.
		var hdr [pb.FrameHeaderBytes]byte
		n, err := io.ReadFull(r.Body, hdr[:])
		if err == nil {
			limit := s.bodyLimitBytes(r.Context())
			if _, length := pb.ParseFrameHeader(hdr[:]); int64(length) > limit {
				pb.WriteStatus(w, codes.ResourceExhausted, fmt.Sprintf("request body larger than %d bytes", limit))
				return
			}
		}
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(hdr[:n]), r.Body), r.Body}
	}
	s.grpc.Load().ServeHTTP(w, r)
}

// serveInfer answers ModelInfer on net/http directly, without grpc-go's
// ServeHTTP (its per-call goroutines and buffers cost more than the
// inference on the hot path); grpc-go keeps the other methods and
// reflection. A unary call is one length-prefixed message each way and a
// status in the trailers.
func (s *Server) serveInfer(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if d, ok := pb.ParseTimeout(r.Header.Get("Grpc-Timeout")); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	refuse := func(code codes.Code, msg string) {
		s.countGRPC(code, time.Now(), s.current(ctx))
		pb.WriteStatus(w, code, msg)
	}
	var hdr [pb.FrameHeaderBytes]byte
	if _, err := io.ReadFull(r.Body, hdr[:]); err != nil {
		refuse(codes.InvalidArgument, fmt.Sprintf("reading the request message: %v", err))
		return
	}
	compressed, length := pb.ParseFrameHeader(hdr[:])
	if compressed {
		refuse(codes.Unimplemented, fmt.Sprintf("compressed requests are not accepted (grpc-encoding %q); send them uncompressed", r.Header.Get("Grpc-Encoding")))
		return
	}
	if limit := s.bodyLimitBytes(ctx); int64(length) > limit {
		refuse(codes.ResourceExhausted, fmt.Sprintf("request body larger than %d bytes", limit))
		return
	}
	body := make([]byte, length)
	if _, err := io.ReadFull(r.Body, body); err != nil {
		refuse(codes.InvalidArgument, fmt.Sprintf("reading the request message: %v", err))
		return
	}
	resp, err := s.grpcInfer(ctx, body) // counts the call
	if err != nil {
		st := status.Convert(err)
		pb.WriteStatus(w, st.Code(), st.Message())
		return
	}
	out, err := proto.Marshal(resp)
	if err != nil {
		pb.WriteStatus(w, codes.Internal, fmt.Sprintf("encoding the response: %v", err))
		return
	}
	if err := pb.WriteMessage(w, out); err != nil {
		s.log.Debug("writing a gRPC response", "err", err)
	}
}

// bodyLimitBytes is the request size limit in force: the runtime.maxBodyBytes
// of the function the request is for, else the largest of those loaded
// (the handler then resolves the revision), else the process's.
func (s *Server) bodyLimitBytes(ctx context.Context) int64 {
	if in := s.current(ctx); in != nil {
		return in.Manifest.Runtime.MaxBodyBytes
	}
	return s.revisions().maxBodyBytes(s.cfg.MaxBodyBytes)
}

func (s *Server) countGRPC(code codes.Code, start time.Time, in *instance.Instance) {
	fn, rev := "", ""
	if in != nil {
		fn, rev = in.Manifest.Name, in.Revision.Name
	}
	s.metrics.requests.WithLabelValues(fn, rev, grpcRoute, strconv.Itoa(pb.HTTPStatusFor(code))).Inc()
	s.metrics.duration.WithLabelValues(fn, rev, grpcRoute).Observe(time.Since(start).Seconds())
}

// grpcInfer is ModelInfer: decode and validate as REST does, infer through
// the batcher, answer raw_output_contents when the request sent raw inputs
// or an output has no typed contents field (FP16, BF16).
func (s *Server) grpcInfer(ctx context.Context, body []byte) (resp *pb.ModelInferResponse, err error) {
	start := time.Now()
	var in *instance.Instance
	defer func() {
		if in == nil {
			in = s.current(ctx)
		}
		s.countGRPC(status.Code(err), start, in)
	}()
	req := &pb.ModelInferRequest{}
	if err := proto.Unmarshal(body, req); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "malformed infer request: %v", err)
	}
	if req.ModelName == "" {
		return nil, status.Error(codes.InvalidArgument, "model_name is required")
	}
	in, err = s.resolve(ctx, req.ModelName, req.ModelVersion)
	if err != nil {
		return nil, s.grpcError(err)
	}
	inputs, rows, raw, err := inferInputs(req, in.Pool.Inputs(), in.Pool.Outputs())
	if err != nil {
		return nil, s.grpcError(err)
	}
	if err := checkRows(in, rows); err != nil {
		return nil, status.Error(codes.ResourceExhausted, err.Error())
	}
	outs, err := in.Infer(ctx, inputs, rows)
	if err != nil {
		return nil, s.grpcError(err)
	}
	resp = &pb.ModelInferResponse{ModelName: in.Manifest.Name, ModelVersion: in.Revision.Name, Id: req.Id}
	var raws [][]byte
	wanted := wantedOutputs(req.Outputs, (*pb.ModelInferRequest_InferRequestedOutputTensor).GetName, in)
	// raw_output_contents is all or nothing: one FP16 or BF16 output, which
	// only travels raw, makes every output raw.
	for _, name := range wanted {
		raw = raw || needsRaw(outs[name])
	}
	for _, name := range wanted {
		var o *pb.ModelInferResponse_InferOutputTensor
		o, raws = outputTensor(outs[name], raw, raws)
		resp.Outputs = append(resp.Outputs, o)
	}
	resp.RawOutputContents = raws
	return resp, nil
}

func (s *Server) grpcModelReady(ctx context.Context, req *pb.ModelReadyRequest) (*pb.ModelReadyResponse, error) {
	_, err := s.resolve(ctx, req.Name, req.Version)
	var he *echo.HTTPError
	if errors.As(err, &he) && he.Code == http.StatusServiceUnavailable {
		return &pb.ModelReadyResponse{Ready: false}, nil
	}
	if err != nil {
		return nil, s.grpcError(err)
	}
	return &pb.ModelReadyResponse{Ready: !s.draining.Load()}, nil
}

func (s *Server) grpcModelMetadata(ctx context.Context, req *pb.ModelMetadataRequest) (*pb.ModelMetadataResponse, error) {
	in, err := s.resolve(ctx, req.Name, req.Version)
	if err != nil {
		return nil, s.grpcError(err)
	}
	describe := func(ios []ort.IO) []*pb.ModelMetadataResponse_TensorMetadata {
		out := make([]*pb.ModelMetadataResponse_TensorMetadata, len(ios))
		for i, io := range ios {
			out[i] = &pb.ModelMetadataResponse_TensorMetadata{Name: io.Name, Datatype: string(io.Datatype), Shape: io.Shape}
		}
		return out
	}
	return &pb.ModelMetadataResponse{
		Name: in.Manifest.Name, Versions: []string{in.Revision.Name}, Platform: "onnxruntime_onnx",
		Inputs: describe(in.Pool.Inputs()), Outputs: describe(in.Pool.Outputs()),
		Properties: modelParameters(in),
	}, nil
}

// grpcError gives an error the gRPC code matching the status REST answers
// it with, and the same message.
func (s *Server) grpcError(err error) error {
	var bad *functions.BadRequest
	var he *echo.HTTPError
	switch {
	case errors.As(err, &bad):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.As(err, &he):
		msg, _ := he.Message.(string)
		return status.Error(pb.CodeForHTTP(he.Code), msg)
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, batch.ErrStopped):
		return status.Error(codes.Unavailable, "draining: the instance is shutting down")
	}
	s.log.Error("gRPC request failed", "err", err)
	return status.Error(codes.Internal, err.Error())
}
