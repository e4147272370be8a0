// Package functionstest holds the checks every function package's tests run
// (as net/http/httptest does for handlers): on its training code, re-export
// reproduces the committed models byte for byte and training honours
// cancellation; on its handler, a body's whole way through decode, model and
// encode, and refusals as *functions.BadRequest. Only tests import it.
package functionstest

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// TrainFunc is a function package's Train: it writes <revision>.onnx files to dir.
type TrainFunc func(ctx context.Context, dir string, progress io.Writer) error

// Reexport trains into a temporary directory and compares each revision's
// model with the committed one in modelsDir; progress must mention marker.
// fn names the function in the message telling how to regenerate.
func Reexport(t *testing.T, fn string, train TrainFunc, modelsDir string, revisions []string, marker string) {
	t.Helper()
	dir := t.TempDir()
	var progress bytes.Buffer
	if err := train(context.Background(), dir, &progress); err != nil {
		t.Fatalf("train: %v\n%s", err, progress.String())
	}
	for _, rev := range revisions {
		fresh, err := os.ReadFile(filepath.Join(dir, rev+".onnx"))
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(modelsDir, rev+".onnx")
		committed, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(fresh, committed) {
			t.Errorf("%s: re-exported model (%d bytes) differs from %s (%d bytes); run `pilotlight train %s` and commit", rev, len(fresh), path, len(committed), fn)
		}
	}
	if !bytes.Contains(progress.Bytes(), []byte(marker)) {
		t.Errorf("progress has no %s lines:\n%s", marker, progress.String())
	}
}

// TrainHonoursCancellation requires train to fail on a cancelled context.
func TrainHonoursCancellation(t *testing.T, train TrainFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := train(ctx, t.TempDir(), nil); err == nil {
		t.Fatal("Train with a cancelled context succeeded")
	}
}
