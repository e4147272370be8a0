package prewarm

import (
	"testing"

	"github.com/pilotlight/pilotlight/runtime/ort"
)

func TestRunsThroughONNXRuntime(t *testing.T) {
	if _, err := ort.Init(); err != nil {
		t.Fatalf("ONNX Runtime must load here (make ort): %v", err)
	}
	if err := Run(); err != nil {
		t.Fatal(err)
	}
}
