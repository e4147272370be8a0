package engine

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Memory budgets of shared isolation, and what the engine reads of its
// children's memory. The per-process budget bounds the sessions one shared
// process holds (what loading a revision adds to its RSS); the machine
// budget bounds every runtime process together (shared processes' base and
// sessions, dedicated and warm-pool processes' RSS), so loading refuses
// before the kernel's OOM killer would choose.

// Shares of the machine's memory the defaults take.
const (
	defaultRuntimeMemoryShare = 8 // a shared process's sessions: 1/8 of the machine
	defaultMachineMemoryNum   = 3 // all runtime processes: 3/4 of the machine
	defaultMachineMemoryDen   = 4
	// fallbackMachineMemory stands in for MemTotal when /proc/meminfo cannot be read.
	fallbackMachineMemory = 4 << 30
	// defaultHostBase is a shared process's RSS before its first revision,
	// until one is measured (a generic pilotlight-runtime: about 56 MiB).
	defaultHostBase = 64 << 20
	// revisionOverhead is added to a model's weights in the estimate of
	// what loading it costs, before its first load measures it.
	revisionOverhead = 4 << 20
	// cudaContextBytes is the device memory one process's CUDA context
	// holds outside its sessions' arenas (the CUDA runtime's primary
	// context, cuDNN and cuBLAS handles and workspaces), charged once per
	// process whose sessions got the CUDA provider. An estimate on the
	// high side of what such a context takes: there is no GPU here to
	// measure one.
	cudaContextBytes = 512 << 20
)

// Device memory (the CUDA provider). A runtime process reports, for each
// revision it loads, the device memory its sessions may hold: the sum of
// their arenas' limits, which ONNX Runtime enforces (runtime/ort's
// DeviceArenaLimit), 0 for sessions on the CPU. The engine charges a
// process those and one CUDA context, and when --runtime-device-memory is
// set, places no revision past it.

// processDeviceBytes is what a runtime process holds on the device when
// its sessions may hold sessions bytes there: nothing when they run on
// the CPU, else those and one CUDA context.
func processDeviceBytes(sessions int64) int64 {
	if sessions <= 0 {
		return 0
	}
	return sessions + cudaContextBytes
}

// deviceExtra is what adding cost device bytes of sessions to a process
// whose sessions hold held adds to the device: the first CUDA revision of
// a process brings its context.
func deviceExtra(held, cost int64) int64 {
	return processDeviceBytes(held+cost) - processDeviceBytes(held)
}

// deviceFits says whether that addition fits the device budget with used
// already taken (budget 0: no device budget).
func deviceFits(budget, used, held, cost int64) bool {
	return budget <= 0 || used+deviceExtra(held, cost) <= budget
}

// DefaultMemoryBudgets are the budgets serve uses without flags, sized
// from the machine: a shared process's sessions, and every runtime process.
func DefaultMemoryBudgets() (perProcess, machine int64) {
	total := MachineMemoryBytes()
	return total / defaultRuntimeMemoryShare, total / defaultMachineMemoryDen * defaultMachineMemoryNum
}

// MachineMemoryBytes is MemTotal from /proc/meminfo.
func MachineMemoryBytes() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return fallbackMachineMemory
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err == nil {
				return kb << 10
			}
		}
	}
	return fallbackMachineMemory
}

// mib formats bytes for people: "12.3 MiB".
func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
