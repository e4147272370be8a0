package server_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/corpus"
	pb "github.com/pilotlight/pilotlight/proto/inference"
	"github.com/pilotlight/pilotlight/runtime/server"
)

// serveModel loads model under a manifest written from extra (YAML lines
// after name, handler and revisions) plus files, serves REST and gRPC on
// one listener, and returns its address and a gRPC client; a load error is
// returned instead.
func serveModel(t *testing.T, model, extra string, files map[string]string) (string, pb.GRPCInferenceServiceClient, error) {
	t.Helper()
	requireORT(t)
	dir := t.TempDir()
	yaml := fmt.Sprintf("name: byo\nhandler: tensor\nrevisions:\n  - name: byo-00001\n    model: %s\nruntime:\n  sessions: 1\n  provider: cpu\n%s", model, extra)
	files[functions.ManifestFile] = yaml
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m, err := functions.LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	s := server.New(server.Config{Registry: prometheus.NewRegistry()})
	if err := s.Load(context.Background(), m, "byo-00001"); err != nil {
		return "", nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveUntilCleanup(t, s, ln, nil)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return ln.Addr().String(), pb.NewGRPCInferenceServiceClient(conn), nil
}

const vadWarmup = `{"inputs":[
  {"name":"input","datatype":"FP32","shape":[1,512],"data":[` + "%s" + `]},
  {"name":"sr","datatype":"INT64","shape":[],"data":16000},
  {"name":"h","datatype":"FP32","shape":[2,1,64],"data":[%s]},
  {"name":"c","datatype":"FP32","shape":[2,1,64],"data":[%s]}]}`

func zeros(n int) string { return strings.TrimSuffix(strings.Repeat("0,", n), ",") }

func vadRequest() string {
	return strings.Replace(strings.Replace(strings.Replace(vadWarmup, "%s", zeros(512), 1), "%s", zeros(128), 1), "%s", zeros(128), 1)
}

// TestWarmupAndBatchingShowInMetadata: Silero VAD without a warmup.json
// becomes ready unwarmed (its synthetic warm-up fails) with batching off
// and the reason in the model metadata; with one it is warm; with a
// warmup.json the model refuses, it does not load and says which file.
func TestWarmupAndBatchingShowInMetadata(t *testing.T) {
	vad := corpus.Model(t, "silero_vad.onnx")
	addr, _, err := serveModel(t, vad, "", map[string]string{})
	if err != nil {
		t.Fatalf("a failed synthetic warm-up must leave the function servable: %v", err)
	}
	code, md := do(t, "GET", "http://"+addr+"/v2/models/byo", "")
	params, _ := md["parameters"].(map[string]any)
	if code != 200 || params["warm"] != "false" || !strings.Contains(params["batching"].(string), `input "sr" is a scalar; input "h" has a fixed first dimension ([2 -1 64])`) || params["max_batch"] != "1" {
		t.Errorf("metadata %d %v", code, params)
	}
	if code, out := do(t, "POST", "http://"+addr+"/v2/models/byo/infer", vadRequest()); code != 200 || len(out["outputs"].([]any)) != 3 {
		t.Errorf("unwarmed infer: %d %v", code, out)
	}

	addr, _, err = serveModel(t, vad, "warmup: warmup.json\n", map[string]string{"warmup.json": vadRequest()})
	if err != nil {
		t.Fatal(err)
	}
	if _, md := do(t, "GET", "http://"+addr+"/v2/models/byo", ""); md["parameters"].(map[string]any)["warm"] != "true" {
		t.Errorf("with warmup.json: %v", md["parameters"])
	}

	short := strings.Replace(vadRequest(), `"shape":[1,512],"data":[`+zeros(512)+`]`, `"shape":[1,1],"data":[0]`, 1)
	_, _, err = serveModel(t, vad, "warmup: warmup.json\n", map[string]string{"warmup.json": short})
	if err == nil || !strings.Contains(err.Error(), "warmup.json") || !strings.Contains(err.Error(), "Pad") {
		t.Errorf("a warmup.json the model refuses: %v, want the load failed naming the file", err)
	}
	wrong := strings.Replace(vadRequest(), `"datatype":"INT64"`, `"datatype":"INT32"`, 1)
	_, _, err = serveModel(t, vad, "warmup: warmup.json\n", map[string]string{"warmup.json": wrong})
	if err == nil || !strings.Contains(err.Error(), `input "sr": datatype "INT32", the model expects INT64`) {
		t.Errorf("a warmup.json that does not match the model: %v", err)
	}

	addr, _, err = serveModel(t, corpus.Root()+"/functions/example-tensor/model.onnx", "batching: none\n", map[string]string{})
	if err != nil {
		t.Fatal(err)
	}
	if _, md := do(t, "GET", "http://"+addr+"/v2/models/byo", ""); md["parameters"].(map[string]any)["batching"] != "off: function.yaml says batching: none" {
		t.Errorf("batching: none: %v", md["parameters"])
	}
	addr, _, err = serveModel(t, corpus.Root()+"/functions/example-tensor/model.onnx", "", map[string]string{})
	if err != nil {
		t.Fatal(err)
	}
	if _, md := do(t, "GET", "http://"+addr+"/v2/models/byo", ""); md["parameters"].(map[string]any)["batching"] != "on" {
		t.Errorf("a batchable model: %v", md["parameters"])
	}
}
