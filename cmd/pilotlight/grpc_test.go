package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/pilotlight/pilotlight/functions/fraud"
	"github.com/pilotlight/pilotlight/internal/testbin"
	pb "github.com/pilotlight/pilotlight/proto/inference"
	"github.com/pilotlight/pilotlight/router/auth"
)

// dialServe opens a grpc-go client (generated from the Open Inference
// Protocol's proto) to serve's one listener.
func dialServe(t *testing.T, url string) pb.GRPCInferenceServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(strings.TrimPrefix(url, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewGRPCInferenceServiceClient(conn)
}

// oneRow builds a one-row request for whatever inputs the model declares,
// asking ModelMetadata through the router (as a client would).
func oneRow(t *testing.T, c pb.GRPCInferenceServiceClient, model string) *pb.ModelInferRequest {
	t.Helper()
	md, err := c.ModelMetadata(context.Background(), &pb.ModelMetadataRequest{Name: model})
	if err != nil {
		t.Fatalf("ModelMetadata %s: %v", model, err)
	}
	req := &pb.ModelInferRequest{ModelName: model}
	for _, in := range md.Inputs {
		shape, n := make([]int64, len(in.Shape)), 1
		for i, d := range in.Shape {
			shape[i] = max(d, 1)
			n *= int(shape[i])
		}
		c := &pb.InferTensorContents{}
		switch in.Datatype {
		case "FP32":
			c.Fp32Contents = make([]float32, n)
		case "INT64":
			c.Int64Contents = make([]int64, n)
		default:
			t.Fatalf("input %s: datatype %s not built by this test", in.Name, in.Datatype)
		}
		req.Inputs = append(req.Inputs, &pb.ModelInferRequest_InferInputTensor{Name: in.Name, Datatype: in.Datatype, Shape: shape, Contents: c})
	}
	return req
}

// TestServeGRPC drives gRPC through `pilotlight serve` with a real grpc-go
// client: a cold start held by the activator, a flag split sticky by
// x-user-id (and by the user_id parameter), bad input answered with codes,
// and authentication on.
func TestServeGRPC(t *testing.T) {
	bin := testbin.Pilotlight(t)
	flagsFile := filepath.Join(t.TempDir(), "flags.json")
	if err := os.WriteFile(flagsFile, []byte(`{"flags": {"fraud-revision": {"state": "ENABLED",
		"variants": {"stable": "fraud-00001", "canary": "fraud-00002"}, "defaultVariant": "stable",
		"targeting": {"fractional": [["stable", 50], ["canary", 50]]}}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, url := startServe(t, bin, "--pool-size", "1", "--flags", flagsFile)
	c := dialServe(t, url)

	t.Run("cold start", func(t *testing.T) {
		req := oneRow(t, c, "example-tensor") // ModelMetadata already started an instance
		var hdr metadata.MD
		resp, err := c.ModelInfer(context.Background(), req, grpc.Header(&hdr))
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Outputs) != 1 || len(resp.Outputs[0].Contents.GetFp32Contents()) != 1 {
			t.Errorf("response = %v", resp)
		}
		if got := hdr.Get("x-pilotlight-revision"); len(got) != 1 || got[0] != "example-tensor-00001" {
			t.Errorf("x-pilotlight-revision = %v", got)
		}
		// The metadata call was the cold one; a revision that never ran: ModelInfer first.
		hdr = nil
		fresh := oneRowNoMetadata("fraud", fraud.NumFeatures)
		fresh.ModelVersion = "fraud-00002"
		if _, err := c.ModelInfer(context.Background(), fresh, grpc.Header(&hdr)); err != nil {
			t.Fatal(err)
		}
		if len(hdr.Get("x-pilotlight-cold-start")) != 1 {
			t.Errorf("first ModelInfer of fraud-00002 has no x-pilotlight-cold-start: %v", hdr)
		}
		hdr = nil
		if _, err := c.ModelInfer(context.Background(), fresh, grpc.Header(&hdr)); err != nil {
			t.Fatal(err)
		}
		if len(hdr.Get("x-pilotlight-cold-start")) != 0 {
			t.Errorf("warm call marked as a cold start: %v", hdr)
		}
	})

	t.Run("flag split sticky by x-user-id", func(t *testing.T) {
		req := oneRowNoMetadata("fraud", fraud.NumFeatures)
		seen := map[string]int{}
		for u := 0; u < 24; u++ {
			user := fmt.Sprintf("user-%d", u)
			first := ""
			for i := 0; i < 3; i++ {
				var hdr metadata.MD
				ctx := metadata.AppendToOutgoingContext(context.Background(), "x-user-id", user)
				if _, err := c.ModelInfer(ctx, req, grpc.Header(&hdr)); err != nil {
					t.Fatal(err)
				}
				rev := hdr.Get("x-pilotlight-revision")[0]
				if first == "" {
					first = rev
					seen[rev]++
				} else if rev != first {
					t.Fatalf("%s moved from %s to %s", user, first, rev)
				}
			}
			// The user_id parameter is the same key when the metadata is absent.
			byParam := protoClone(req)
			byParam.Parameters = map[string]*pb.InferParameter{"user_id": {ParameterChoice: &pb.InferParameter_StringParam{StringParam: user}}}
			var hdr metadata.MD
			if _, err := c.ModelInfer(context.Background(), byParam, grpc.Header(&hdr)); err != nil {
				t.Fatal(err)
			}
			if rev := hdr.Get("x-pilotlight-revision")[0]; rev != first {
				t.Errorf("%s: user_id parameter routed to %s, x-user-id to %s", user, rev, first)
			}
		}
		if seen["fraud-00001"] == 0 || seen["fraud-00002"] == 0 {
			t.Errorf("a 50/50 split sent 24 users to %v", seen)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		good := oneRowNoMetadata("example-tensor", 10)
		bad := func(mut func(*pb.ModelInferRequest)) *pb.ModelInferRequest {
			r := protoClone(good)
			mut(r)
			return r
		}
		for _, tc := range []struct {
			name     string
			req      *pb.ModelInferRequest
			code     codes.Code
			mentions string
		}{
			{"unknown model", bad(func(r *pb.ModelInferRequest) { r.ModelName = "nope" }), codes.NotFound, "nope"},
			{"unknown version", bad(func(r *pb.ModelInferRequest) { r.ModelVersion = "example-tensor-00009" }), codes.NotFound, "example-tensor-00009"},
			{"unknown datatype", bad(func(r *pb.ModelInferRequest) { r.Inputs[0].Datatype = "FP8" }), codes.InvalidArgument, "datatype"},
			{"huge shape", bad(func(r *pb.ModelInferRequest) { r.Inputs[0].Shape = []int64{1 << 40, 10} }), codes.InvalidArgument, "too large"},
			{"raw length mismatch", bad(func(r *pb.ModelInferRequest) {
				r.Inputs[0].Contents = nil
				r.RawInputContents = [][]byte{make([]byte, 7)}
			}), codes.InvalidArgument, "raw contents are 7 bytes"},
			{"over maxBodyBytes", bad(func(r *pb.ModelInferRequest) {
				r.Inputs[0].Contents = nil
				r.RawInputContents = [][]byte{make([]byte, 2<<20)}
			}), codes.ResourceExhausted, "larger than"},
		} {
			_, err := c.ModelInfer(context.Background(), tc.req)
			if st := status.Convert(err); st.Code() != tc.code || !strings.Contains(st.Message(), tc.mentions) {
				t.Errorf("%s: %v %q, want %v mentioning %q", tc.name, st.Code(), st.Message(), tc.code, tc.mentions)
			}
		}
		if _, err := c.ModelInfer(context.Background(), good); err != nil {
			t.Fatalf("after bad input: %v", err)
		}
	})

	t.Run("auth on", func(t *testing.T) {
		key, _ := auth.NewKey()
		keysFile := filepath.Join(t.TempDir(), "keys.yaml")
		if err := os.WriteFile(keysFile, []byte("keys:\n  - id: client\n    hash: "+auth.Sum(key)+"\n    functions: [example-tensor]\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		// startServe passes --dev; a later --dev=false turns authentication back on.
		_, base := startServe(t, bin, "--dev=false", "--keys-file", keysFile, "--admin-addr", "", "--pool-size", "0")
		ac := dialServe(t, base)
		req := oneRowNoMetadata("example-tensor", 10)
		with := func(md ...string) context.Context {
			return metadata.AppendToOutgoingContext(context.Background(), md...)
		}
		if _, err := ac.ModelInfer(context.Background(), req); status.Code(err) != codes.Unauthenticated {
			t.Errorf("no key: %v, want Unauthenticated", err)
		}
		if _, err := ac.ModelInfer(with("authorization", "Bearer pl_wrong-0000000000000000000000000000000000"), req); status.Code(err) != codes.Unauthenticated {
			t.Errorf("wrong key: %v, want Unauthenticated", err)
		}
		if _, err := ac.ModelInfer(with("x-api-key", key), oneRowNoMetadata("fraud", fraud.NumFeatures)); status.Code(err) != codes.PermissionDenied {
			t.Errorf("function the key does not list: %v, want PermissionDenied", err)
		}
		if _, err := ac.ModelInfer(with("authorization", "Bearer "+key), req); err != nil {
			t.Errorf("Bearer key: %v", err)
		}
		if _, err := ac.ModelInfer(with("x-api-key", key), req); err != nil {
			t.Errorf("x-api-key: %v", err)
		}
		if r, err := ac.ServerReady(context.Background(), &pb.ServerReadyRequest{}); err != nil || !r.Ready {
			t.Errorf("ServerReady stays public like /v2/health/ready: %v %v", r, err)
		}
	})
}

// oneRowNoMetadata is a one-row FP32 request of width features for model.
func oneRowNoMetadata(model string, width int) *pb.ModelInferRequest {
	name := map[string]string{"example-tensor": "input_vectors", "fraud": "features"}[model]
	return &pb.ModelInferRequest{ModelName: model, Inputs: []*pb.ModelInferRequest_InferInputTensor{{
		Name: name, Datatype: "FP32", Shape: []int64{1, int64(width)}, Contents: &pb.InferTensorContents{Fp32Contents: make([]float32, width)}}}}
}

func protoClone(r *pb.ModelInferRequest) *pb.ModelInferRequest {
	return proto.Clone(r).(*pb.ModelInferRequest)
}
