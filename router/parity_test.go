package router_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/pilotlight/pilotlight/functions"
	pb "github.com/pilotlight/pilotlight/proto/inference"
	"github.com/pilotlight/pilotlight/router"
	"github.com/pilotlight/pilotlight/router/auth"
	"github.com/pilotlight/pilotlight/router/ratelimit"
)

// TestRESTAndGRPCDecideAlike drives the same requests through REST (a V2
// infer) and gRPC (ModelInfer) and requires the same decision from the one
// admission pipeline: the HTTP status and the gRPC code CodeForHTTP maps it
// to, the same message, the same shed marking. A fresh router per case and
// protocol, so rate buckets and slots do not leak between them.
func TestRESTAndGRPCDecideAlike(t *testing.T) {
	const (
		allKey     = "pl_parity-all-key-0123456789abcdefghijklmn"
		limitedKey = "pl_parity-limited-key-0123456789abcdefghij"
		tinyKey    = "pl_parity-tiny-key-0123456789abcdefghijklm"
	)
	keys, err := auth.Parse([]byte(`{"keys":[
		{"id":"all","hash":"`+auth.Sum(allKey)+`","functions":["*"]},
		{"id":"limited","hash":"`+auth.Sum(limitedKey)+`","functions":["m"]},
		{"id":"tiny","hash":"`+auth.Sum(tinyKey)+`","functions":["*"],"rate":{"rps":0.001,"burst":1}}]}`), "parity")
	if err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("x", 2000) // over m's 1000-byte limit, under other's
	tests := []struct {
		name, key, function, id string
		requests                int  // sent in a row; the last is judged
		full                    bool // m is at its concurrency cap
		status                  int
		msg                     string
		shed                    bool
	}{
		{name: "no key", function: "m", status: 401, msg: "missing API key"},
		{name: "wrong key", key: "pl_nope", function: "m", status: 401, msg: "invalid API key"},
		{name: "limited key, forbidden function", key: limitedKey, function: "other", status: 403, msg: `key "limited" may not call function "other"`},
		{name: "limited key, unknown function", key: limitedKey, function: "nope", status: 403, msg: `key "limited" may not call function "nope"`},
		{name: "unknown function", key: allKey, function: "nope", status: 404, msg: `unknown function "nope"`},
		{name: "body over the function's limit", key: allKey, function: "m", id: big, status: 413, msg: "request body larger than 1000 bytes (function m's runtime.maxBodyBytes)"},
		{name: "at the concurrency cap", key: allKey, function: "m", full: true, status: 503, msg: "function m has 1 requests in flight, its maximum; retry shortly", shed: true},
		{name: "over the key's rate", key: tinyKey, function: "m", requests: 2, status: 429, msg: `rate limit exceeded for key "tiny"`},
		{name: "admitted", key: allKey, function: "m", status: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			type outcome struct {
				status int
				code   codes.Code
				msg    string
				shed   bool
			}
			var rest outcome
			grpcOut := map[string]outcome{}
			for _, protocol := range []string{"rest", "grpc", "grpc over net/http"} {
				url, netHTTP, cl := parityRouter(t, keys)
				if protocol == "grpc over net/http" {
					url = netHTTP // the path of a connection whose first request was REST
				}
				if tt.full {
					slot, r := cl.Enter("m")
					if r != nil {
						t.Fatal(r)
					}
					defer slot.Release()
				}
				for i := 0; i < max(tt.requests, 1); i++ {
					if protocol == "rest" {
						rest = outcome{}
						body, _ := json.Marshal(map[string]any{"id": tt.id, "inputs": []any{}})
						req, _ := http.NewRequest("POST", "http://"+url+"/v2/models/"+tt.function+"/infer", bytes.NewReader(body))
						if tt.key != "" {
							req.Header.Set("Authorization", "Bearer "+tt.key)
						}
						resp, err := http.DefaultClient.Do(req)
						if err != nil {
							t.Fatal(err)
						}
						raw, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						var e struct{ Error string }
						_ = json.Unmarshal(raw, &e)
						rest = outcome{status: resp.StatusCode, code: pb.CodeForHTTP(resp.StatusCode), msg: e.Error, shed: resp.Header.Get(router.ShedHeader) != ""}
						continue
					}
					conn, err := grpc.NewClient(url, grpc.WithTransportCredentials(insecure.NewCredentials()))
					if err != nil {
						t.Fatal(err)
					}
					ctx := context.Background()
					if tt.key != "" {
						ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tt.key)
					}
					var hdr metadata.MD
					_, err = pb.NewGRPCInferenceServiceClient(conn).ModelInfer(ctx, &pb.ModelInferRequest{ModelName: tt.function, Id: tt.id}, grpc.Header(&hdr))
					conn.Close()
					st := status.Convert(err)
					grpcOut[protocol] = outcome{code: st.Code(), msg: st.Message(), shed: len(hdr.Get(strings.ToLower(router.ShedHeader))) > 0}
				}
			}
			if rest.status != tt.status || !strings.HasPrefix(rest.msg, tt.msg) || rest.shed != tt.shed {
				t.Errorf("REST: %d %q shed %v, want %d %q shed %v", rest.status, rest.msg, rest.shed, tt.status, tt.msg, tt.shed)
			}
			for protocol, g := range grpcOut {
				if g.code != rest.code || g.msg != rest.msg || g.shed != rest.shed {
					t.Errorf("%s: %v %q shed %v; REST: %d (%v) %q shed %v", protocol, g.code, g.msg, g.shed, rest.status, rest.code, rest.msg, rest.shed)
				}
			}
		})
	}
}

// parityRouter is a router with keys, a rate limiter and a concurrency cap
// of 1 per function, in front of one stand-in instance that answers REST
// and gRPC alike (the real one is tested in runtime/server); it returns
// the router's front door (REST, and gRPC on grpc-go's transport), the
// router's handler on net/http's h2c server (gRPC as a connection that
// mixes it with REST meets it) and the cap.
func parityRouter(t *testing.T, keys *auth.Keys) (string, string, *ratelimit.ConcurrencyLimiter) {
	t.Helper()
	g := grpc.NewServer()
	pb.RegisterGRPCInferenceServiceServer(g, &recordingInstance{})
	inst := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if pb.IsGRPC(r) {
			g.ServeHTTP(w, r)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"model_name":"m","outputs":[]}`)
	}))
	be := &instanceBackend{addr: inst, warm: map[string]bool{}}
	m := &functions.Manifest{Name: "m", Handler: "tensor", Revisions: []functions.Revision{{Name: "m-00001"}}}
	m.Runtime.MaxBodyBytes = 1000
	other := &functions.Manifest{Name: "other", Handler: "tensor", Revisions: []functions.Revision{{Name: "other-00001"}}}
	other.Runtime.MaxBodyBytes = 100000
	cl := ratelimit.NewConcurrencyLimiter(ratelimit.ConcurrencyConfig{Max: 1})
	rt := newRouter(t, router.Config{Functions: []*functions.Manifest{m, other}, Backend: be, Registry: prometheus.NewRegistry(), Logger: quietLogger(),
		Keys: keys, RateLimit: ratelimit.New(ratelimit.Config{RPS: 1000, Burst: 1000}), Concurrency: cl}, nil)
	return strings.TrimPrefix(serveRouter(t, rt), "http://"), h2cServer(t, rt.GRPCHandler(rt.Handler())), cl
}
