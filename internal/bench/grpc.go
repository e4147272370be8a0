package bench

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/pilotlight/pilotlight/internal/loadgen"
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

// grpcLoad is one closed-loop gRPC load: concurrency workers calling
// ModelInfer back to back for d.
type grpcLoad struct {
	sent, failed int
	errors       map[string]int // status code and message → calls
	elapsed      time.Duration
	latencies    []time.Duration
}

func (l *grpcLoad) merge(o *grpcLoad) {
	l.sent += o.sent
	l.failed += o.failed
	l.elapsed += o.elapsed
	l.latencies = append(l.latencies, o.latencies...)
	for k, n := range o.errors {
		l.errors[k] += n
	}
}

func (l *grpcLoad) rps() float64 { return float64(l.sent-l.failed) / l.elapsed.Seconds() }

func (l *grpcLoad) String() string {
	return fmt.Sprintf("%.0f req/s, p50 %s, p99 %s", l.rps(), ms(quantile(l.latencies, .5)), ms(quantile(l.latencies, .99)))
}

func runGRPC(ctx context.Context, clients []pb.GRPCInferenceServiceClient, req *pb.ModelInferRequest, concurrency int, d time.Duration) *grpcLoad {
	var mu sync.Mutex
	out := &grpcLoad{errors: map[string]int{}}
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(d)
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func(c pb.GRPCInferenceServiceClient) {
			defer wg.Done()
			var lat []time.Duration
			sent, failed := 0, 0
			errs := map[string]int{}
			// Calls in flight at the end finish and count: none is cut off.
			for ctx.Err() == nil && time.Now().Before(end) {
				t := time.Now()
				_, err := c.ModelInfer(ctx, req)
				sent++
				if err != nil {
					failed++
					st := status.Convert(err)
					errs[st.Code().String()+": "+st.Message()]++
					continue
				}
				lat = append(lat, time.Since(t))
			}
			mu.Lock()
			out.sent += sent
			out.failed += failed
			out.latencies = append(out.latencies, lat...)
			for k, n := range errs {
				out.errors[k] += n
			}
			mu.Unlock()
		}(clients[w%len(clients)])
	}
	wg.Wait()
	out.elapsed = time.Since(start)
	return out
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

// GRPC compares V2 inference over gRPC (typed and raw contents) with REST,
// each direct to one instance and through the router, in one run on the
// same instance, at concurrency 32.
func GRPC(ctx context.Context, e Env) ([]Row, error) {
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
	direct, closeDirect, err := dialGRPC(instance)
	if err != nil {
		return nil, err
	}
	defer closeDirect()
	routed, closeRouted, err := dialGRPC(s.Addr)
	if err != nil {
		return nil, err
	}
	defer closeRouted()
	for _, c := range [][]pb.GRPCInferenceServiceClient{direct, routed} {
		if _, err := c[0].ModelInfer(ctx, typed); err != nil {
			return nil, fmt.Errorf("gRPC ModelInfer before the load: %w", err)
		}
	}
	const conc = 32
	path := "/v2/models/" + m.Name + "/versions/" + revision + "/infer"
	bodyFn := func(int, int) []byte { return body }
	// Warm every path, then measure each in turn on the same instance.
	loadgen.Run(ctx, loadgen.Config{URL: base + path, Concurrency: conc, Requests: 500, Body: bodyFn})
	runGRPC(ctx, routed, typed, conc, e.Duration/5)
	runGRPC(ctx, direct, typed, conc, e.Duration/5)
	// Rounds of every load in turn, so drift in what else the machine runs
	// spreads over all six instead of landing on one.
	const rounds = 3
	slice := e.Duration / rounds
	restDirect, restRouted := &loadgen.Result{}, &loadgen.Result{}
	typedDirect, typedRouted, rawDirect, rawRouted := &grpcLoad{errors: map[string]int{}}, &grpcLoad{errors: map[string]int{}}, &grpcLoad{errors: map[string]int{}}, &grpcLoad{errors: map[string]int{}}
	for r := 0; r < rounds; r++ {
		restDirect.Merge(loadgen.Run(ctx, loadgen.Config{URL: "http://" + instance + path, Concurrency: conc, Duration: slice, Body: bodyFn}))
		restRouted.Merge(loadgen.Run(ctx, loadgen.Config{URL: base + path, Concurrency: conc, Duration: slice, Body: bodyFn}))
		typedDirect.merge(runGRPC(ctx, direct, typed, conc, slice))
		typedRouted.merge(runGRPC(ctx, routed, typed, conc, slice))
		rawDirect.merge(runGRPC(ctx, direct, raw, conc, slice))
		rawRouted.merge(runGRPC(ctx, routed, raw, conc, slice))
	}
	failed := typedDirect.failed + typedRouted.failed + rawDirect.failed + rawRouted.failed + restDirect.Unanswered() + restRouted.Unanswered()
	sent := typedDirect.sent + typedRouted.sent + rawDirect.sent + rawRouted.sent + restDirect.Sent + restRouted.Sent
	for _, l := range []*grpcLoad{typedDirect, typedRouted, rawDirect, rawRouted} {
		for msg, n := range l.errors {
			fmt.Fprintf(e.Log, "bench grpc: %d calls failed: %s\n", n, msg)
		}
	}
	restStr := func(r *loadgen.Result) string {
		return fmt.Sprintf("%.0f req/s, p50 %s, p99 %s", r.RPS(), ms(r.Quantile(.5)), ms(r.Quantile(.99)))
	}
	ratio := func(a, b float64) string { return fmt.Sprintf("%.2f", a/b) }
	return []Row{
		{Name: "REST direct to instance, c=32", Value: restStr(restDirect)},
		{Name: "REST through the router, c=32", Value: restStr(restRouted)},
		{Name: "gRPC typed contents, direct, c=32", Value: typedDirect.String()},
		{Name: "gRPC typed contents, through the router, c=32", Value: typedRouted.String()},
		{Name: "gRPC raw contents, direct, c=32", Value: rawDirect.String()},
		{Name: "gRPC raw contents, through the router, c=32", Value: rawRouted.String()},
		{Name: "router / direct throughput: REST", Value: ratio(restRouted.RPS(), restDirect.RPS())},
		{Name: "router / direct throughput: gRPC typed", Value: ratio(typedRouted.rps(), typedDirect.rps()), Goal: "≥ 0.70", Met: met(typedRouted.rps() >= 0.7*typedDirect.rps())},
		{Name: "router / direct throughput: gRPC raw", Value: ratio(rawRouted.rps(), rawDirect.rps()), Goal: "≥ 0.70", Met: met(rawRouted.rps() >= 0.7*rawDirect.rps())},
		{Name: "gRPC typed / REST throughput, direct", Value: ratio(typedDirect.rps(), restDirect.RPS())},
		{Name: "gRPC typed / REST throughput, through the router", Value: ratio(typedRouted.rps(), restRouted.RPS())},
		{Name: "gRPC raw / typed throughput, through the router", Value: ratio(rawRouted.rps(), typedRouted.rps())},
		{Name: "failed requests", Value: fmt.Sprintf("%d / %d", failed, sent), Goal: "0", Met: met(failed == 0)},
	}, nil
}
