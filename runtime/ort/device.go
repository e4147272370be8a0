package ort

import "fmt"

// Device memory of sessions on the CUDA provider. There is no GPU on the
// machines this is built and tested on, so it is kept correct by
// construction rather than by measurement:
//
//   - One ONNX Runtime environment per process: Init creates it once
//     (sync.Once, onnxruntime_go's InitializeEnvironment), so every session
//     of a shared process, whatever its revision, lives in that one
//     environment. ONNX Runtime's CUDA provider runs on the CUDA runtime's
//     primary context of its device, one per process and device: the
//     revisions of a shared process share one CUDA context, which the
//     engine charges once per process.
//   - Each CUDA session's device allocations go through its provider's
//     arena, and NewSession bounds that arena with the provider's
//     gpu_mem_limit option (Options.DeviceMemoryLimit, which the instance
//     sets to functions.DeviceArenaBytes, the rule the engine charges by):
//     a session cannot hold more device memory than it is charged (past the limit an allocation fails
//     with an error, a 500 for that request, never an out-of-memory of the
//     device). What a revision is charged on the device is then the sum of
//     its sessions' limits, a bound the runtime enforces, not a guess.
//   - A session that got the CPU provider holds no device memory: 0, with
//     the reason (ProviderReason).
//
// What the bound leaves out: the CUDA context itself and cuDNN/cuBLAS
// workspaces, which live outside the arena; the engine charges a shared
// process's context once (its CUDAContextBytes estimate).

// ProviderReason says why a session got the provider it got.
func ProviderReason(requested, got, fallback string) string {
	switch {
	case got == ProviderCUDA:
		return fmt.Sprintf("provider %s: the CUDA provider loaded", orAuto(requested))
	case requested == ProviderCPU:
		return "provider cpu in function.yaml"
	case fallback != "":
		return fallback
	}
	return "cpu"
}

func orAuto(p string) string {
	if p == "" {
		return ProviderAuto
	}
	return p
}
