package ort

// #include <malloc.h>
import "C"

import "runtime/debug"

// ReleaseMemory hands memory freed by destroyed sessions back to the
// kernel. ONNX Runtime frees a session's arena and weights into glibc's
// malloc, which keeps most of it mapped for reuse; malloc_trim returns the
// free pages of every arena (not only the top of the heap), so a shared
// process's RSS falls when it unloads a revision, and the Go heap is
// scavenged too.
func ReleaseMemory() {
	TrimHeap()
	debug.FreeOSMemory()
}

// mmapThreshold is the size from which glibc's malloc gives an allocation
// a mapping of its own, returned to the kernel the moment it is freed.
// By default glibc raises the threshold to the size of each mapped chunk
// freed (up to 32 MiB), so after a process's first unload the next
// model's weights come from the heap, where this process's frees did not
// reach the kernel: a shared process's second unload of a 32 MiB model
// freed 1 MiB of RSS (TestUnloadReturnsMemory with -count=4). Setting it
// with mallopt fixes it and turns the adjustment off.
const mmapThreshold = 1 << 20

// fixMmapThreshold sets mmapThreshold, once, before ONNX Runtime loads.
func fixMmapThreshold() { C.mallopt(C.M_MMAP_THRESHOLD, mmapThreshold) }

// TrimHeap is ReleaseMemory without the Go heap's forced collection: what a
// load left in malloc's free lists (the model file, the parsed graph) goes
// back to the kernel, cheaply enough for a wake's path.
func TrimHeap() { C.malloc_trim(0) }
