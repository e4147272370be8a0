// Package bpf is Pilotlight's kernel view of its runtime instances: eBPF
// programs that time each instance's cold start (exec, bind, listen,
// accept, first response write) and the kernel's share of each request's
// latency (run-queue delay, socket receive-queue delay, time inside network
// syscalls), attributed to function and revision and exported as
// Prometheus metrics. The engine hands it pids and labels (Track, Untrack)
// and the cold-start points only it knows (Mark); the package imports
// neither the router nor the runtime.
//
// Every program is tp_btf (a BTF-typed raw tracepoint, attached with
// link.AttachTracing): no tracefs mount, kprobes or fentry needed. Loaded
// on Linux 6.18 (amd64), instruction counts are as compiled / as loaded
// (xlated) / as verified:
//
//	program         attach point                  insns  xlated  verified
//	on_exec         tp_btf/sched_process_exec        73      87       119
//	on_exit         tp_btf/sched_process_exit        58      64        65
//	on_sys_enter    tp_btf/sys_enter                111     113       147
//	on_sys_exit     tp_btf/sys_exit                 472     533      3813
//	on_wakeup       tp_btf/sched_wakeup              21      23        23
//	on_wakeup_new   tp_btf/sched_wakeup_new          21      23        23
//	on_switch       tp_btf/sched_switch             130     145       922
//	on_data_ready   tp_btf/sk_data_ready             24      26        27
//	on_recv_length  tp_btf/sock_recv_length         114     127       903
//	on_sock_state   tp_btf/inet_sock_set_state       32      34        36
//
// Maps (key/value bytes, entries):
//
//	tracked    hash      4/4      256  tgid -> histogram slot (Track/Untrack)
//	hists      array     4/1008   256  per-slot log2 histograms, 3 kinds x 40 buckets
//	timelines  hash      4/48    1024  open cold-start timelines
//	ready      hash      4/8     1024  pids marked ready (arms the cold-start accept)
//	wakeups    lru_hash  4/8    16384  tid -> wakeup time
//	syscalls   lru_hash  4/16   16384  tid -> network syscall entry
//	sk_ready   lru_hash  8/8    16384  struct sock * -> oldest unread data
//	ports      hash      4/4     1024  TCP port -> listening tgid
//	events     ringbuf   256 KiB       timeline events
//	lost       array     4/8        1  events dropped
//
// The C source is probes.bpf.c; bpf2go compiles it into the committed
// probes_x86_bpfel.o and probes_x86_bpfel.go (./hack/bpf-gen.sh regenerates,
// ./hack/bpf-check.sh fails when they are stale). README.md in this folder
// explains what each metric measures and its limits.
package bpf
