package functions

import "os"

// Device memory of a revision whose sessions get the CUDA provider. Each
// session's arena is bounded, by ONNX Runtime's gpu_mem_limit, at its
// model's weights twice (the initializers, and as much again for
// activations) plus a floor, so a small model's large batch still fits.
// The runtime sets that limit and the engine charges it, both from here,
// so what a revision may hold on the device and what it is charged cannot
// disagree.
const (
	deviceArenaWeights = 2
	deviceArenaFloor   = 64 << 20
)

// DeviceArenaBytes is the device memory one CUDA session of a model of
// modelBytes may hold.
func DeviceArenaBytes(modelBytes int64) int64 {
	return deviceArenaWeights*max(modelBytes, 0) + deviceArenaFloor
}

// DeviceBytesOf is what a revision's sessions may hold on a CUDA device
// together: its sessions times DeviceArenaBytes of its model file's size.
func (m *Manifest) DeviceBytesOf(r Revision) int64 {
	var size int64
	if fi, err := os.Stat(m.ModelPath(r)); err == nil {
		size = fi.Size()
	}
	return int64(m.Runtime.Sessions) * DeviceArenaBytes(size)
}
