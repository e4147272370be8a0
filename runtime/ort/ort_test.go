package ort_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/pilotlight/pilotlight/functions/tensor"
	"github.com/pilotlight/pilotlight/runtime/ort"
	"github.com/pilotlight/pilotlight/runtime/sessions"
)

func root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func example() string { return filepath.Join(root(), "functions", "example-tensor", "model.onnx") }

func TestSessionProvidersAndRun(t *testing.T) {
	if _, err := ort.Init(); err != nil {
		t.Fatalf("ONNX Runtime must load here (make ort): %v", err)
	}
	for _, tc := range []struct {
		provider, want string
		fallback       bool
	}{{"cpu", "cpu", false}, {"auto", "cpu", true}} {
		s, err := ort.NewSession(example(), ort.Options{Provider: tc.provider, IntraOpThreads: 1})
		if err != nil {
			t.Fatalf("provider %s: %v", tc.provider, err)
		}
		if s.Provider != tc.want || (s.Fallback != "") != tc.fallback {
			t.Errorf("provider %s: got %q fallback %q", tc.provider, s.Provider, s.Fallback)
		}
		out, err := s.Run([]*tensor.Tensor{{Name: "input_vectors", Datatype: tensor.FP32, Shape: []int64{2, 10},
			Data: []float32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}}})
		if err != nil {
			t.Fatal(err)
		}
		y := out["output_scalars"]
		if y == nil || fmt.Sprint(y.Shape) != "[2]" || y.Data.([]float32)[0] != 55 || y.Data.([]float32)[1] != 0 {
			t.Errorf("output = %+v, want the sums [55 0]", y)
		}
		s.Close()
	}
	// This build has no CUDA provider: asking for cuda explicitly is an error that says so.
	if _, err := ort.NewSession(example(), ort.Options{Provider: "cuda"}); err == nil || !strings.Contains(err.Error(), "cuda") {
		t.Errorf("explicit cuda on a CPU-only library: %v, want an error naming cuda", err)
	}
	if _, err := ort.NewSession(example(), ort.Options{Provider: "tpu"}); err == nil {
		t.Error("unknown provider accepted")
	}
}

// TestMissingLibraryIsOneClearError runs in a child process so the
// process-wide environment of this one stays initialised.
func TestMissingLibraryIsOneClearError(t *testing.T) {
	if os.Getenv("ORT_CHILD") == "1" {
		_, err := ort.Init()
		fmt.Println("ERR:", err)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestMissingLibraryIsOneClearError$")
	cmd.Env = append(os.Environ(), "ORT_CHILD=1", "ONNXRUNTIME_LIB=/nonexistent/libonnxruntime.so")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child crashed instead of returning an error: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "make ort") || !strings.Contains(string(out), "/nonexistent/libonnxruntime.so") {
		t.Fatalf("error should name the path and the make target:\n%s", out)
	}
}

// BenchmarkSessionRun measures one ONNX Runtime call per model at batch 1 and 32.
func BenchmarkSessionRun(b *testing.B) {
	models, _ := filepath.Glob(filepath.Join(root(), "functions", "*", "models", "*.onnx"))
	models = append(models, example())
	for _, path := range models {
		s, err := ort.NewSession(path, ort.Options{Provider: "cpu", IntraOpThreads: 1})
		if err != nil {
			b.Fatal(err)
		}
		for _, rows := range []int64{1, 32} {
			inputs := sessions.WarmupInputs(s.Inputs())
			for _, in := range inputs {
				in.Shape[0] = rows
				n, _ := tensor.Elements(in.Shape)
				switch in.Datatype {
				case tensor.FP32:
					in.Data = make([]float32, n)
				case tensor.INT64:
					in.Data = make([]int64, n)
				}
			}
			name := strings.TrimSuffix(filepath.Base(path), ".onnx")
			if name == "model" {
				name = filepath.Base(filepath.Dir(path))
			}
			b.Run(fmt.Sprintf("%s/batch=%d", name, rows), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					if _, err := s.Run(inputs); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(rows), "ns/row")
			})
		}
		s.Close()
	}
}

// TestDescribeFollowsTheFile: Describe's answers are kept per file, so a
// model replaced at the same path is described again, and a caller that
// changes what it got changes nobody else's.
func TestDescribeFollowsTheFile(t *testing.T) {
	if _, err := ort.Init(); err != nil {
		t.Fatalf("ONNX Runtime must load here (make ort): %v", err)
	}
	path := filepath.Join(t.TempDir(), "model.onnx")
	copyFile := func(src string) {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path+".tmp", b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil { // a new inode, as a deploy writes it
			t.Fatal(err)
		}
	}
	copyFile(example())
	in, _, err := ort.Describe(path)
	if err != nil || len(in) != 1 || in[0].Name != "input_vectors" {
		t.Fatalf("example model: %+v %v", in, err)
	}
	in[0].Name, in[0].Shape[1] = "changed", 99
	again, _, err := ort.Describe(path)
	if err != nil || again[0].Name != "input_vectors" || again[0].Shape[1] != 10 {
		t.Fatalf("described again after the caller changed its copy: %+v %v", again, err)
	}
	copyFile(filepath.Join(root(), "functions", "fraud", "models", "fraud-00001.onnx"))
	in, _, err = ort.Describe(path)
	if err != nil || len(in) == 0 || in[0].Name == "input_vectors" {
		t.Fatalf("a model replaced at the same path is described as the old one: %+v %v", in, err)
	}
	if err := os.WriteFile(path, []byte("not a model"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ort.Describe(path); err == nil {
		t.Fatal("a file that is no model described without an error")
	}
}
