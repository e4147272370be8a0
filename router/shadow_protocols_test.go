package router_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/functions/fraud"
	pb "github.com/pilotlight/pilotlight/proto/inference"
	"github.com/pilotlight/pilotlight/rollout"
)

// TestShadowRolloutInEveryProtocol runs the README's blue-green rollout
// (shadow 50%, then one switch) under live traffic in each protocol a
// client may speak — the function's own JSON, V2 over REST, V2 over gRPC —
// against real instances: a candidate that reproduces the serving model is
// compared and promoted; an inverted one is rolled back by the agreement
// gate before any client sees it. Shadow copies are compared in the
// protocol they were sent in, so none is counted failed or incomparable.
func TestShadowRolloutInEveryProtocol(t *testing.T) {
	candidates := map[string]func(testing.TB, []byte) []byte{
		"equal":    func(_ testing.TB, b []byte) []byte { return b },
		"inverted": invertModel,
	}
	for _, protocol := range []string{"function", "v2-rest", "v2-grpc"} {
		for _, name := range []string{"equal", "inverted"} {
			t.Run(protocol+"/"+name, func(t *testing.T) {
				dir := t.TempDir()
				m := fraudRevisions(t, dir, func(b []byte) []byte { return candidates[name](t, b) })
				p := startFlagPlatform(t, []*functions.Manifest{m}, flagFile(t, dir, fraudFlags))
				load := startProtocolLoad(t, p, protocol, 4)
				spec := rollout.Spec{Function: "fraud", To: "fraud-00002", Strategy: rollout.StrategyBlueGreen, Shadow: 50, Interval: time.Second,
					MinRequests: 10, MaxP99: 5 * time.Second, MinAgreement: 0.95}
				if _, err := p.rollouts.Start(spec); err != nil {
					t.Fatal(err)
				}
				st := waitRollout(t, p, "fraud")
				load.finish()
				var shadowDecision rollout.Decision
				for _, d := range st.Decisions {
					if d.Phase == rollout.PhaseShadow && d.Compared > 0 {
						shadowDecision = d
					}
				}
				t.Logf("%s, %s candidate: %s; shadow phase compared %.0f, agreement %.4f, mean |Δp| %.4f, failed %.0f, incomparable %.0f",
					protocol, name, st.State, shadowDecision.Compared, shadowDecision.Agreement, shadowDecision.ScoreDelta, shadowDecision.ShadowFailed, shadowDecision.ShadowIncomparable)
				if load.failed() > 0 {
					t.Errorf("%d of %d client requests failed", load.failed(), load.total())
				}
				switch name {
				case "equal":
					if st.State != rollout.StatePromoted || shadowDecision.Agreement < 0.999 {
						t.Fatalf("an equal candidate under %s traffic: %s, shadow %+v; decisions %+v", protocol, st.State, shadowDecision, st.Decisions)
					}
				case "inverted":
					last := st.Decisions[len(st.Decisions)-1]
					if st.State != rollout.StateRolledBack || last.Check != rollout.CheckAgreement || last.Phase != rollout.PhaseShadow || last.Agreement > 0.5 {
						t.Fatalf("an inverted candidate under %s traffic: %s, last %+v", protocol, st.State, last)
					}
				}
				if tot := p.shadow.Totals("fraud", "fraud-00002"); tot.Failed != 0 || tot.Incomparable != 0 || tot.Compared < 10 {
					t.Errorf("shadow totals %+v: want ≥ 10 compared, none failed or incomparable", tot)
				}
			})
		}
	}
}

// protocolLoad sends fraud transactions from the holdout set in one
// protocol from a few clients until finish, counting failures.
type protocolLoad struct {
	stop     chan struct{}
	wg       sync.WaitGroup
	mu       sync.Mutex
	sent, ko int
}

func startProtocolLoad(t *testing.T, p *flagPlatform, protocol string, clients int) *protocolLoad {
	t.Helper()
	txs := fraud.Generate(fraud.HoldoutSeed, 200)
	type body struct {
		json, v2 []byte
		features []float32
	}
	bodies := make([]body, len(txs))
	for i, ex := range txs {
		f := make([]float32, fraud.NumFeatures)
		fraud.Features(&ex.Tx, f)
		j, _ := json.Marshal(ex.Tx)
		v2, _ := json.Marshal(map[string]any{"inputs": []any{map[string]any{"name": "features", "datatype": "FP32", "shape": []int{1, fraud.NumFeatures}, "data": f}}})
		bodies[i] = body{j, v2, f}
	}
	var conn *grpc.ClientConn
	if protocol == "v2-grpc" {
		var err error
		if conn, err = grpc.NewClient(p.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	l := &protocolLoad{stop: make(chan struct{})}
	send := func(i int) error {
		b := bodies[i%len(bodies)]
		user := fmt.Sprintf("u-%d", i)
		switch protocol {
		case "v2-grpc":
			ctx := metadata.AppendToOutgoingContext(context.Background(), "x-user-id", user)
			_, err := pb.NewGRPCInferenceServiceClient(conn).ModelInfer(ctx, &pb.ModelInferRequest{ModelName: "fraud",
				Inputs: []*pb.ModelInferRequest_InferInputTensor{{Name: "features", Datatype: "FP32", Shape: []int64{1, int64(fraud.NumFeatures)},
					Contents: &pb.InferTensorContents{Fp32Contents: b.features}}}})
			return err
		}
		url, raw := p.url+"/functions/fraud", b.json
		if protocol == "v2-rest" {
			url, raw = p.url+"/v2/models/fraud/infer", b.v2
		}
		req, _ := http.NewRequest("POST", url, bytes.NewReader(raw))
		req.Header.Set("X-User-ID", user)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	for c := range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := c; ; i += clients {
				select {
				case <-l.stop:
					return
				default:
				}
				err := send(i)
				l.mu.Lock()
				l.sent++
				if err != nil {
					l.ko++
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *protocolLoad) finish() { close(l.stop); l.wg.Wait() }

func (l *protocolLoad) failed() int { l.mu.Lock(); defer l.mu.Unlock(); return l.ko }

func (l *protocolLoad) total() int { l.mu.Lock(); defer l.mu.Unlock(); return l.sent }
