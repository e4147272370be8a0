package server_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"math"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/frame"
	pb "github.com/pilotlight/pilotlight/proto/inference"
)

// grpcAnswer is what a client learns from a unary gRPC call, whatever
// carried it: the HTTP status, the content type, the status and message
// (from the trailers, or the headers of a trailers-only answer), and the
// response message.
type grpcAnswer struct {
	httpStatus  int
	contentType string
	status      string
	message     string
	body        []byte // the length-prefixed response message(s)
	errorJSON   string // a non-gRPC answer's {"error": ...}
}

func answerFrom(status int, header, trailer http.Header, body []byte) grpcAnswer {
	a := grpcAnswer{httpStatus: status, contentType: header.Get("Content-Type"), body: body}
	for _, h := range []http.Header{header, trailer} {
		if v := h.Get("Grpc-Status"); v != "" {
			a.status, a.message = v, h.Get("Grpc-Message")
		}
	}
	if status != http.StatusOK {
		var e map[string]string
		_ = json.Unmarshal(body, &e)
		a.errorJSON, a.body = e["error"], nil
	}
	return a
}

// grpcMessage is a message with gRPC's length prefix.
func grpcMessage(compressed byte, msg []byte) []byte {
	b := make([]byte, pb.FrameHeaderBytes, pb.FrameHeaderBytes+len(msg))
	b[0] = compressed
	binary.BigEndian.PutUint32(b[1:], uint32(len(msg)))
	return append(b, msg...)
}

// TestFramedGRPCAnswersAsH2C sends the same gRPC calls to one instance over
// h2c (its port) and as frames (its socket, as the router carries a local
// call): every answer — status code, message, raw and typed outputs,
// metadata, the errors of grpc-go's own methods — is the same.
func TestFramedGRPCAnswersAsH2C(t *testing.T) {
	s, _ := loadExample(t, func(m *functions.Manifest) { m.Runtime.MaxBodyBytes = 4096; m.Runtime.MaxRequestRows = 4 })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "i.sock")
	uln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	serveUntilCleanup(t, s, ln, uln)
	h2c := &http.Client{Transport: &http.Transport{Protocols: h2cOnly()}}
	overH2C := func(method string, md [][2]string, body []byte) grpcAnswer {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, "http://"+ln.Addr().String()+method, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("Te", "trailers")
		for _, kv := range md {
			req.Header.Add(kv[0], kv[1])
		}
		resp, err := h2c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return answerFrom(resp.StatusCode, resp.Header, resp.Trailer, b)
	}
	fc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	br := bufio.NewReader(fc)
	var (
		enc  frame.Encoder
		buf  []byte
		head frame.ResponseHead
	)
	asFrame := func(revision, method string, md [][2]string, body []byte) grpcAnswer {
		t.Helper()
		enc.StartRequest(revision, []byte(http.MethodPost), []byte(method), 0)
		enc.HeaderString("Content-Type", "application/grpc")
		enc.HeaderString("Te", "trailers")
		for _, kv := range md {
			enc.HeaderString(kv[0], kv[1])
		}
		f, err := enc.Finish(body)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fc.Write(f); err != nil {
			t.Fatal(err)
		}
		if err := frame.ReadResponseHead(br, &buf, 64<<10, &head); err != nil {
			t.Fatal(err)
		}
		header, trailer := http.Header{}, http.Header{}
		for _, h := range head.Headers {
			if name, ok := strings.CutPrefix(string(h.Name), frame.TrailerPrefix); ok {
				trailer.Add(name, string(h.Value))
			} else {
				header.Add(string(h.Name), string(h.Value))
			}
		}
		b := make([]byte, head.Body)
		if _, err := io.ReadFull(br, b); err != nil {
			t.Fatal(err)
		}
		return answerFrom(head.Status, header, trailer, b)
	}

	const svc = "/inference.GRPCInferenceService/"
	marshal := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return grpcMessage(0, b)
	}
	infer := func(mut func(*pb.ModelInferRequest)) []byte {
		r := &pb.ModelInferRequest{ModelName: "example-tensor", Id: "call-1", Inputs: []*pb.ModelInferRequest_InferInputTensor{fp32Input(2, 1)}}
		if mut != nil {
			mut(r)
		}
		return marshal(r)
	}
	raw := func(r *pb.ModelInferRequest) {
		var b []byte
		for _, v := range r.Inputs[0].Contents.Fp32Contents {
			b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
		}
		r.Inputs[0].Contents, r.RawInputContents = nil, [][]byte{b}
	}
	cases := []struct {
		name, method string
		md           [][2]string
		body         []byte
		reply        proto.Message // the response message type (nil: none expected)
		code         codes.Code
	}{
		{"typed infer", "ModelInfer", nil, infer(nil), &pb.ModelInferResponse{}, codes.OK},
		{"raw infer answers raw outputs", "ModelInfer", nil, infer(raw), &pb.ModelInferResponse{}, codes.OK},
		{"infer with metadata", "ModelInfer", [][2]string{{"X-User-Id", "u1"}, {"Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}, infer(nil), &pb.ModelInferResponse{}, codes.OK},
		{"unknown model", "ModelInfer", nil, infer(func(r *pb.ModelInferRequest) { r.ModelName = "nope" }), nil, codes.NotFound},
		{"unknown version", "ModelInfer", nil, infer(func(r *pb.ModelInferRequest) { r.ModelVersion = "example-tensor-00009" }), nil, codes.NotFound},
		{"wrong shape", "ModelInfer", nil, infer(func(r *pb.ModelInferRequest) { r.Inputs[0].Shape = []int64{2, 9} }), nil, codes.InvalidArgument},
		{"more rows than maxRequestRows", "ModelInfer", nil, infer(func(r *pb.ModelInferRequest) { r.Inputs[0] = fp32Input(5, 1) }), nil, codes.ResourceExhausted},
		{"message over maxBodyBytes", "ModelInfer", nil, infer(func(r *pb.ModelInferRequest) { r.Inputs[0] = fp32Input(200, 1) }), nil, codes.ResourceExhausted},
		{"malformed protobuf", "ModelInfer", nil, grpcMessage(0, []byte{0x0a, 0xff}), nil, codes.InvalidArgument},
		{"compressed", "ModelInfer", [][2]string{{"Grpc-Encoding", "gzip"}}, grpcMessage(1, []byte{1, 2, 3}), nil, codes.Unimplemented},
		{"no message", "ModelInfer", nil, nil, nil, codes.InvalidArgument},
		{"metadata", "ModelMetadata", nil, marshal(&pb.ModelMetadataRequest{Name: "example-tensor"}), &pb.ModelMetadataResponse{}, codes.OK},
		{"metadata of an unknown model", "ModelMetadata", nil, marshal(&pb.ModelMetadataRequest{Name: "nope"}), nil, codes.NotFound},
		{"model ready", "ModelReady", nil, marshal(&pb.ModelReadyRequest{Name: "example-tensor"}), &pb.ModelReadyResponse{}, codes.OK},
		{"malformed model ready", "ModelReady", nil, grpcMessage(0, []byte{0x0a, 0xff}), nil, codes.InvalidArgument},
		{"metadata over maxBodyBytes", "ModelMetadata", nil, grpcMessage(0, make([]byte, 5000)), nil, codes.ResourceExhausted},
		{"server live", "ServerLive", nil, marshal(&pb.ServerLiveRequest{}), &pb.ServerLiveResponse{}, codes.OK},
		{"server metadata", "ServerMetadata", nil, marshal(&pb.ServerMetadataRequest{}), &pb.ServerMetadataResponse{}, codes.OK},
		{"unknown method", "ModelStreamInfer", nil, marshal(&pb.ServerLiveRequest{}), nil, codes.Unimplemented},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := overH2C(svc+tc.method, tc.md, tc.body)
			got := asFrame("", svc+tc.method, tc.md, tc.body)
			if want.status != strconv.Itoa(int(tc.code)) {
				t.Fatalf("over h2c: grpc-status %q %q, want %d (%v): the case tests nothing", want.status, want.message, tc.code, tc.code)
			}
			if got.httpStatus != want.httpStatus || got.contentType != want.contentType || got.status != want.status || got.message != want.message {
				t.Errorf("framed: HTTP %d %s grpc-status %s %q\n   h2c: HTTP %d %s grpc-status %s %q",
					got.httpStatus, got.contentType, got.status, got.message, want.httpStatus, want.contentType, want.status, want.message)
			}
			if tc.reply == nil {
				if len(got.body) != 0 || len(want.body) != 0 {
					t.Errorf("a message with an error status: framed %d bytes, h2c %d", len(got.body), len(want.body))
				}
				return
			}
			g, w := proto.Clone(tc.reply), proto.Clone(tc.reply)
			if err := unmarshalMessage(got.body, g); err != nil {
				t.Fatalf("framed reply: %v", err)
			}
			if err := unmarshalMessage(want.body, w); err != nil {
				t.Fatalf("h2c reply: %v", err)
			}
			if !proto.Equal(g, w) {
				t.Errorf("replies differ:\n framed %v\n    h2c %v", g, w)
			}
			if r, ok := g.(*pb.ModelInferResponse); ok {
				rawWanted := strings.HasPrefix(tc.name, "raw")
				if (len(r.RawOutputContents) > 0) != rawWanted || len(r.Outputs) != 1 || r.Id != "call-1" {
					t.Errorf("infer reply %v: want raw outputs only for raw inputs, one output, the call's id", r)
				}
			}
		})
	}

	// A frame for a revision this instance does not serve is refused before
	// any handler; the instance's own revision, named, is served.
	if a := asFrame("example-tensor-00009", svc+"ModelInfer", nil, infer(nil)); a.httpStatus != http.StatusNotFound || !strings.Contains(a.errorJSON, "example-tensor-00009") {
		t.Errorf("a frame for another revision: %+v, want 404 with a JSON error naming it", a)
	}
	if a := asFrame("example-tensor-00001", svc+"ModelInfer", nil, infer(nil)); a.status != "0" {
		t.Errorf("a frame naming the instance's revision: %+v, want grpc-status 0", a)
	}
}

func unmarshalMessage(b []byte, m proto.Message) error {
	if len(b) < pb.FrameHeaderBytes {
		return io.ErrUnexpectedEOF
	}
	_, n := pb.ParseFrameHeader(b)
	if int(n) != len(b)-pb.FrameHeaderBytes {
		return io.ErrUnexpectedEOF
	}
	return proto.Unmarshal(b[pb.FrameHeaderBytes:], m)
}
