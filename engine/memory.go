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
)

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
