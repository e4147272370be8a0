// Package bpf is Pilotlight's kernel view of its runtime instances: eBPF
// programs that time each instance's cold start (exec, listen, accept,
// first response write) and split its wall time into on CPU, waiting for a
// CPU, blocked in page faults and blocked; measure the kernel's share of
// each request's latency (run-queue delay, socket receive-queue delay, and
// optionally time inside network syscalls); and account every TCP
// connection of an instance by direction and peer, reporting outbound ones
// to anything but DNS, and every connection to its Unix socket (the
// router's framed transport, which fires no TCP tracepoint). Everything is attributed to function and revision
// and exported as Prometheus metrics. The engine hands it pids and labels
// (Track, Untrack) and the cold-start points only it knows (Mark); the
// package imports neither the router nor the runtime.
//
// Every program is tp_btf (a BTF-typed raw tracepoint, attached with
// link.AttachTracing): no tracefs mount, kprobes or fentry needed. The two
// syscall programs are attached only while a tracked instance loads (or
// always with Config.SyscallLatency): a syscall tracepoint sends every
// task's system calls through the kernel's slow path. Per-task and
// per-socket state lives in task and socket local storage, so the
// scheduler and socket programs cost a pointer read for the machine's
// other tasks and sockets.
//
// README.md in this folder lists each program with its instruction count,
// each map with its size, and the measured cost. The C source is
// probes.bpf.c; bpf2go compiles it into the committed probes_x86_bpfel.o
// and probes_x86_bpfel.go (./hack/bpf-gen.sh regenerates,
// ./hack/bpf-check.sh fails when they are stale).
package bpf
