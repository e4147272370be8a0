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

// TrimHeap is ReleaseMemory without the Go heap's forced collection: what a
// load left in malloc's free lists (the model file, the parsed graph) goes
// back to the kernel, cheaply enough for a wake's path.
func TrimHeap() { C.malloc_trim(0) }
