package bench

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// CPU time from procfs, the one owner of it for every figure: a process's
// threads' run time to the nanosecond (schedstat), its reaped children's
// at tick resolution, a process tree's, and the machine's busy time.

// pathCPU is CPU time (user + system, seconds) of the processes a request
// goes through.
type pathCPU struct {
	serve     float64 // the serve process: router, engine, probes' user space
	instances float64 // its descendants (the runtime instance), reaped ones included
	loadgen   float64 // this process: the load generator
}

func (c pathCPU) total() float64 { return c.serve + c.instances + c.loadgen }

func (c pathCPU) add(o pathCPU) pathCPU {
	return pathCPU{c.serve + o.serve, c.instances + o.instances, c.loadgen + o.loadgen}
}

func (c pathCPU) sub(o pathCPU) pathCPU {
	return pathCPU{c.serve - o.serve, c.instances - o.instances, c.loadgen - o.loadgen}
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times (100 on
// every Linux architecture Go supports).
const clockTicks = 100

// threadsCPU is the run time of pid's live threads in seconds, to the
// nanosecond: the sum of /proc/<pid>/task/*/schedstat's first field.
func threadsCPU(pid int) float64 {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, _ := os.ReadDir(dir)
	var ns float64
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/schedstat")
		if err != nil {
			continue
		}
		f := strings.Fields(string(b))
		if len(f) > 0 {
			v, _ := strconv.ParseFloat(f[0], 64)
			ns += v
		}
	}
	return ns / 1e9
}

// reapedCPU is the CPU time of pid's reaped children (cutime + cstime of
// /proc/<pid>/stat), in seconds, at tick resolution.
func reapedCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	// Fields after the command name (which may hold spaces): state is
	// field 3, cutime 16, cstime 17.
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 15 {
		return 0
	}
	var ticks float64
	for _, v := range f[13:15] {
		t, _ := strconv.ParseFloat(v, 64)
		ticks += t
	}
	return ticks / clockTicks
}

// readPathCPU reads serve's, its descendants' and this process's CPU time.
// Threads that exit between two readings take their time with them; the
// processes on the path keep theirs for the whole load.
func readPathCPU(serve int) pathCPU {
	c := pathCPU{serve: threadsCPU(serve), loadgen: threadsCPU(os.Getpid()), instances: reapedCPU(serve)}
	pending := Children(serve)
	for len(pending) > 0 {
		pid := pending[len(pending)-1]
		pending = append(pending[:len(pending)-1], Children(pid)...)
		c.instances += threadsCPU(pid) + reapedCPU(pid)
	}
	return c
}

// machineBusy is the machine's non-idle CPU time so far, in seconds
// (/proc/stat: every column but idle and iowait; guest time is inside user).
func machineBusy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var ticks float64
	for i, v := range f[1:] {
		if i == 3 || i == 4 || i >= 7 { // idle, iowait, steal, guest, guest_nice
			continue
		}
		t, _ := strconv.ParseFloat(v, 64)
		ticks += t
	}
	return ticks / clockTicks
}

// treeCPU is the run time of pid's and its live descendants' threads, in
// seconds: a proxy that forks its workers (nginx) counted whole.
func treeCPU(pid int) float64 {
	cpu := threadsCPU(pid)
	for _, child := range Children(pid) {
		cpu += treeCPU(child)
	}
	return cpu
}
