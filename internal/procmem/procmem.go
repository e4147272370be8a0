// Package procmem reads a process's memory as the kernel accounts it: the
// resident set (Go heap, ONNX Runtime's allocations, mapped libraries
// alike), which is what a shared runtime process's budget is about.
package procmem

import (
	"os"
	"strconv"
	"strings"
)

// RSS is the resident set size of pid (0: this process) in bytes, from
// /proc/<pid>/statm; 0 when the process is gone.
func RSS(pid int) int64 {
	p := "/proc/self/statm"
	if pid > 0 {
		p = "/proc/" + strconv.Itoa(pid) + "/statm"
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}
