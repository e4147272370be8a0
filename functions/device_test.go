package functions

import (
	"os"
	"path/filepath"
	"testing"
)

// A CUDA session's arena is its weights twice and a floor; a revision's
// device charge is that times its sessions.
func TestDeviceBytes(t *testing.T) {
	for _, c := range []struct{ model, want int64 }{{0, deviceArenaFloor}, {-1, deviceArenaFloor}, {100 << 20, 200<<20 + deviceArenaFloor}} {
		if got := DeviceArenaBytes(c.model); got != c.want {
			t.Errorf("DeviceArenaBytes(%d) = %d, want %d", c.model, got, c.want)
		}
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "model.onnx"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	m := &Manifest{Dir: dir, Revisions: []Revision{{Name: "f-00001", Model: "model.onnx"}}}
	m.Runtime.Sessions = 3
	if got, want := m.DeviceBytesOf(m.Revisions[0]), int64(3*(2<<20+deviceArenaFloor)); got != want {
		t.Errorf("DeviceBytesOf = %d, want %d", got, want)
	}
}
