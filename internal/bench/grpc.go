package bench

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	pb "github.com/pilotlight/pilotlight/proto/inference"
)

// grpcConns is how many HTTP/2 connections a gRPC load spreads its
// workers over (grpc-go multiplexes every call of a ClientConn on one).
const grpcConns = 4

// GRPCRequests turns the V2 REST body V2Body builds into the same request
// over gRPC, once with typed contents and once with raw_input_contents.
func GRPCRequests(model string, body []byte) (typed, raw *pb.ModelInferRequest, err error) {
	var rest struct {
		Inputs []struct {
			Name     string    `json:"name"`
			Datatype string    `json:"datatype"`
			Shape    []int64   `json:"shape"`
			Data     []float64 `json:"data"`
		} `json:"inputs"`
	}
	if err := json.Unmarshal(body, &rest); err != nil {
		return nil, nil, fmt.Errorf("reading the REST body: %w", err)
	}
	typed = &pb.ModelInferRequest{ModelName: model}
	raw = &pb.ModelInferRequest{ModelName: model}
	le := binary.LittleEndian
	for _, in := range rest.Inputs {
		c := &pb.InferTensorContents{}
		var b []byte
		for _, v := range in.Data {
			switch in.Datatype {
			case "FP32":
				c.Fp32Contents = append(c.Fp32Contents, float32(v))
				b = le.AppendUint32(b, math.Float32bits(float32(v)))
			case "FP64":
				c.Fp64Contents = append(c.Fp64Contents, v)
				b = le.AppendUint64(b, math.Float64bits(v))
			case "INT64":
				c.Int64Contents = append(c.Int64Contents, int64(v))
				b = le.AppendUint64(b, uint64(int64(v)))
			case "INT32":
				c.IntContents = append(c.IntContents, int32(v))
				b = le.AppendUint32(b, uint32(int32(v)))
			default:
				return nil, nil, fmt.Errorf("input %s: datatype %s is not built by the gRPC bench", in.Name, in.Datatype)
			}
		}
		typed.Inputs = append(typed.Inputs, &pb.ModelInferRequest_InferInputTensor{Name: in.Name, Datatype: in.Datatype, Shape: in.Shape, Contents: c})
		raw.Inputs = append(raw.Inputs, &pb.ModelInferRequest_InferInputTensor{Name: in.Name, Datatype: in.Datatype, Shape: in.Shape})
		raw.RawInputContents = append(raw.RawInputContents, b)
	}
	return typed, raw, nil
}

func dialGRPC(addr string) ([]pb.GRPCInferenceServiceClient, func(), error) {
	var conns []*grpc.ClientConn
	closeAll := func() {
		for _, c := range conns {
			c.Close()
		}
	}
	var clients []pb.GRPCInferenceServiceClient
	for i := 0; i < grpcConns; i++ {
		c, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		conns = append(conns, c)
		clients = append(clients, pb.NewGRPCInferenceServiceClient(c))
	}
	return clients, closeAll, nil
}

// GRPC compares V2 inference over gRPC (typed and raw contents) with
// REST, in one run on the same instance at 32 requests in flight: direct
// to the instance, through nginx's grpc_pass (the yardstick: a C proxy
// with one worker, as in the hop figure), and through the router, which
// carries a call to a local instance as frames on its socket. The gRPC
// loads are h2load's (4 connections of 8 streams), REST's wrk's (32
// connections): C load generators, so the client is not what is measured.
// Rounds alternate every path so drift on the shared machine falls on all.
func GRPC(ctx context.Context, e Env) ([]Row, error) {
	h2, err := newH2load(e.Log)
	if err != nil {
		return nil, err
	}
	oi, err := e.oneInstance()
	if err != nil {
		return nil, err
	}
	defer oi.close()
	s, m, base, body, instance, revision := oi.serve, oi.m, oi.base, oi.body, oi.addr, oi.revision
	typed, raw, err := GRPCRequests(m.Name, body)
	if err != nil {
		return nil, err
	}
	typed.ModelVersion, raw.ModelVersion = revision, revision
	dir, err := os.MkdirTemp("", "pilotlight-bench-grpc-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	w, err := newWrk(dir, body)
	if err != nil {
		return nil, err
	}
	nginx, err := startPeer(ctx, "nginx-grpc", instance, e.Log)
	if err != nil {
		return nil, err
	}
	defer nginx.stop()

	// Every path answers the same call alike (grpc-go's client checks the
	// status); the answer's size tells h2load's successes from gRPC errors.
	hosts := []struct{ name, addr string }{{"direct", instance}, {"nginx grpc_pass", nginx.addr}, {"router", s.Addr}}
	calls := map[string]map[string]grpcCall{} // contents → path → call
	for contents, req := range map[string]*pb.ModelInferRequest{"typed": typed, "raw": raw} {
		msg, err := proto.Marshal(req)
		if err != nil {
			return nil, err
		}
		file, err := writeGRPCCall(dir, contents+".bin", msg)
		if err != nil {
			return nil, err
		}
		calls[contents] = map[string]grpcCall{}
		for _, h := range hosts {
			clients, closeClients, err := dialGRPC(h.addr)
			if err != nil {
				return nil, err
			}
			resp, err := clients[0].ModelInfer(ctx, req)
			closeClients()
			if err != nil {
				return nil, fmt.Errorf("gRPC ModelInfer %s before the load: %w", h.name, err)
			}
			calls[contents][h.name] = grpcCall{url: "http://" + h.addr + "/" + pb.GRPCInferenceService_ServiceDesc.ServiceName + "/ModelInfer",
				file: file, replySize: pb.FrameHeaderBytes + proto.Size(resp)}
		}
	}
	path := "/v2/models/" + m.Name + "/versions/" + revision + "/infer"
	rest := []struct{ name, url string }{{"direct", "http://" + instance + path}, {"router", base + path}}
	slice := max(2*time.Second, (e.Duration / 3).Round(time.Second))
	// Warm every path.
	for _, r := range rest {
		if _, _, _, err := w.run(ctx, r.url, time.Second); err != nil {
			return nil, err
		}
	}
	for _, contents := range []string{"typed", "raw"} {
		for _, h := range hosts {
			if _, err := h2.run(ctx, calls[contents][h.name], time.Second); err != nil {
				return nil, err
			}
		}
	}
	const rounds = 3
	roundRPS := map[string][]float64{} // "typed/router", "rest/direct" → each round's rate
	restFailed := 0
	grpcRes := map[string]*h2loadResult{} // "typed/router" → merged rounds
	for r := 0; r < rounds; r++ {
		for _, p := range rest {
			rps, _, failed, err := w.run(ctx, p.url, slice)
			if err != nil {
				return nil, err
			}
			roundRPS["rest/"+p.name] = append(roundRPS["rest/"+p.name], rps)
			restFailed += failed
		}
		for _, contents := range []string{"typed", "raw"} {
			for _, h := range hosts {
				res, err := h2.run(ctx, calls[contents][h.name], slice)
				if err != nil {
					return nil, err
				}
				key := contents + "/" + h.name
				if grpcRes[key] == nil {
					grpcRes[key] = &h2loadResult{}
				}
				grpcRes[key].merge(res)
				roundRPS[key] = append(roundRPS[key], res.rps())
			}
		}
	}
	meanRPS := func(xs []float64) float64 {
		t := 0.0
		for _, x := range xs {
			t += x
		}
		return t / float64(len(xs))
	}
	grpcStr := func(k string) string {
		r := grpcRes[k]
		v := fmt.Sprintf("%.0f req/s, mean %s", r.rps(), ms(r.mean/rounds))
		if r.failed > 0 {
			v += fmt.Sprintf(", %d failed", r.failed)
		}
		return v
	}
	// A ratio is the median of the rounds' ratios: the two paths of a
	// round ran seconds apart, so a slow spell of the shared machine
	// falls on one round, not on one path.
	ratio := func(a, b string) float64 {
		rs := make([]float64, rounds)
		for i := range rs {
			rs[i] = roundRPS[a][i] / roundRPS[b][i]
		}
		return median(rs)
	}
	f2 := func(v float64) string { return fmt.Sprintf("%.2f", v) }
	failed := restFailed
	for _, r := range grpcRes {
		failed += r.failed
	}
	restRouted, restDirect := meanRPS(roundRPS["rest/router"]), meanRPS(roundRPS["rest/direct"])
	rows := []Row{
		{Name: "REST direct to instance (wrk c=32)", Value: fmt.Sprintf("%.0f req/s", restDirect)},
		{Name: "REST through the router (wrk c=32)", Value: fmt.Sprintf("%.0f req/s", restRouted)},
		{Name: "load generators", Value: fmt.Sprintf("gRPC: h2load %d connections × %d streams; REST: wrk 32 connections; %d rounds of %s per path; ratios: median of the rounds'", h2loadConns, h2loadStreams, rounds, slice)},
	}
	for _, contents := range []string{"typed", "raw"} {
		viaNginx, viaRouter := ratio(contents+"/nginx grpc_pass", contents+"/direct"), ratio(contents+"/router", contents+"/direct")
		rows = append(rows,
			Row{Name: "gRPC " + contents + " contents, direct", Value: grpcStr(contents + "/direct")},
			Row{Name: "gRPC " + contents + " contents, nginx " + peerVersion("nginx") + " grpc_pass", Value: grpcStr(contents + "/nginx grpc_pass")},
			Row{Name: "gRPC " + contents + " contents, through the router", Value: grpcStr(contents + "/router")},
			Row{Name: "nginx grpc_pass / direct: gRPC " + contents, Value: f2(viaNginx)},
			Row{Name: "router / direct: gRPC " + contents, Value: f2(viaRouter), Goal: "≥ nginx's", Met: met(viaRouter >= viaNginx)},
		)
	}
	rows = append(rows,
		Row{Name: "router / direct: REST", Value: f2(ratio("rest/router", "rest/direct"))},
		Row{Name: "gRPC typed / REST, through the router", Value: f2(ratio("typed/router", "rest/router")), Goal: "≥ 1.00", Met: met(ratio("typed/router", "rest/router") >= 1)},
		Row{Name: "gRPC raw / REST, through the router", Value: f2(ratio("raw/router", "rest/router")), Goal: "≥ 1.00", Met: met(ratio("raw/router", "rest/router") >= 1)},
		Row{Name: "gRPC typed / REST, direct", Value: f2(ratio("typed/direct", "rest/direct"))},
		Row{Name: "failed calls (HTTP errors, gRPC errors: answers without the message)", Value: fmt.Sprint(failed), Goal: "0", Met: met(failed == 0)},
	)
	return rows, nil
}
