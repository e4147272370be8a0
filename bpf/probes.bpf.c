//go:build ignore

// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
//
// Pilotlight's kernel probes, per runtime instance the engine starts:
//
//  * the cold-start timeline (exec, listen, first accept, the accept and
//    first response write of the cold-start request) and its anatomy: each
//    phase's wall time split into on CPU, waiting for a CPU, blocked, and
//    blocked in a page fault, plus major faults and bytes read from *.onnx;
//  * per-request kernel latency of tracked instances (run-queue delay,
//    socket receive-queue delay, and, as an option, network syscall time);
//  * every TCP connection of a tracked instance, by direction and peer, with
//    its bytes at close; outbound ones to anything but DNS are reported.
//
// Every program is tp_btf (BTF-typed raw tracepoint). Only on_sys_exit and
// on_sys_enter sit on the system-call path, and user space attaches them
// only while a tracked instance's cold start is open (or always, when
// network syscall latency is asked for): a syscall tracepoint puts every
// task's system calls on the kernel's slow path, whatever the program does.
//
// Syscall numbers and pt_regs are x86-64's: built with bpf2go -target amd64.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#ifndef __TARGET_ARCH_x86
#error "probes.bpf.c reads x86-64 syscall numbers and pt_regs; build with bpf2go -target amd64"
#endif

// Sizes. Keep in sync with probes.go (maxTracked, histBuckets).
#define MAX_TRACKED 256    // instances measured at once (per-request histograms)
#define MAX_TIMELINES 1024 // children of the serve process whose cold start is open
#define MAX_THREADS 16384  // threads with a pending wakeup, syscall or cold-start state
#define MAX_SOCKETS 16384  // sockets with unread data / connections being followed
#define MAX_PORTS 1024     // listening ports of tracked instances
#define MAX_ROUTER_CONNS 4096 // connections the router holds open
#define HIST_BUCKETS 40    // log2(ns) buckets: [2^i, 2^(i+1)) ns, last one open
#define RINGBUF_BYTES (256 * 1024)

#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define S_IFREG 0100000
#define MSG_PEEK 2
#define TASK_RUNNING 0
#define AF_INET 2
#define AF_INET6 10
#define DNS_PORT 53
#define PF_KTHREAD 0x00200000

// x86-64 syscall numbers.
#define NR_read 0
#define NR_write 1
#define NR_pread64 17
#define NR_readv 19
#define NR_writev 20
#define NR_connect 42
#define NR_accept 43
#define NR_sendto 44
#define NR_recvfrom 45
#define NR_sendmsg 46
#define NR_recvmsg 47
#define NR_preadv 295
#define NR_accept4 288
#define NR_recvmmsg 299
#define NR_sendmmsg 307

enum hist_kind {
	HIST_RUNQ = 0,    // wakeup -> on CPU
	HIST_SOCKQ = 1,   // data ready on the socket -> read returns it
	HIST_SYSCALL = 2, // network syscall enter -> exit (only with syscall_latency)
	HIST_KINDS = 3,
};

enum event_kind {
	EV_EXEC = 1,         // arg: parent tgid; v: anatomy
	EV_LISTEN = 3,       // arg: port; v: anatomy
	EV_FIRST_ACCEPT = 4, // first connection established to the instance (usually the engine's readiness poll)
	EV_ACCEPT = 5,       // first one after user space marked the instance ready; v: anatomy
	EV_FIRST_WRITE = 6,  // first send on that connection; arg: bytes; v: anatomy
	EV_EXIT = 7,         // the whole thread group exited
	EV_PORT = 8,         // a tracked or starting instance listens on TCP port arg
	EV_CONN_OPEN = 9,    // a tracked instance's connection opened; v: struct conn_payload
	EV_CONN_CLOSE = 10,  // ... and closed, with its bytes
};

// Where a cold-starting process's wall time goes, in priority order: some
// thread on a CPU; else some thread waiting for one; else some thread
// blocked inside a page fault; else every thread blocked.
enum anat_state {
	ANAT_ONCPU = 0,
	ANAT_RUNQ = 1,
	ANAT_FAULTS = 2,
	ANAT_BLOCKED = 3,
	ANAT_STATES = 4,
};

enum thread_state {
	TH_BLOCKED = 0, // also: unknown
	TH_RUNNING = 1,
	TH_RUNNABLE = 2,
	TH_FAULT = 3, // blocked inside a page fault
};

enum conn_dir { DIR_INBOUND = 0, DIR_OUTBOUND = 1 };
enum peer_class { PEER_ROUTER = 0, PEER_LOOPBACK = 1, PEER_DNS = 2, PEER_OTHER = 3 };

struct hist {
	__u64 count;
	__u64 sum_ns;
	__u64 buckets[HIST_BUCKETS];
};

struct hists {
	struct hist h[HIST_KINDS];
};

// Cumulative since the process's cold start was opened; user space takes
// differences between the snapshots carried by timeline events.
struct anatomy {
	__u64 last_ns; // time up to which ns[] is accounted
	__s32 running, runnable, faulting, pad;
	__u64 ns[ANAT_STATES];
	__u64 maj_flt;
	__u64 model_bytes; // read(2) family on regular files named *.onnx
};

struct anat_snap {
	__u64 ns[ANAT_STATES];
	__u64 maj_flt;
	__u64 model_bytes;
};

struct conn_payload {
	__u64 rx_bytes, tx_bytes, dur_ns;
	__u8 addr[16]; // peer, network order (IPv4 in the first 4 bytes)
	__u16 port;    // peer, host order
	__u16 family;
	__u8 direction, peer_class, pad[2];
};

struct event {
	__u64 ts_ns; // bpf_ktime_get_ns (CLOCK_MONOTONIC)
	__u32 tgid;
	__u32 kind;
	__s64 arg;
	union {
		struct anat_snap anat;
		struct conn_payload conn;
	};
};

struct timeline {
	__u64 first_accept_ns;
	__u64 accept_ns;
	__u64 accept_sk; // struct sock * of the cold-start request's connection
};

struct thread {
	__u32 state;
	__u32 tgid;
	__u64 maj_flt; // the thread's maj_flt when last accounted
};

struct conn {
	__u32 tgid;
	__u8 direction, peer_class, pad[2];
	__u64 start_ns;
};

struct sys_start {
	__u64 ts_ns;
	__u64 nr;
};

// Set by the loader: the tgid whose children get a timeline from exec on
// (the serve process, which is also the router: its connections are "router").
const volatile __u32 parent_tgid = 0;
// Set by the loader: time network syscalls of tracked instances.
const volatile __u32 syscall_latency = 0;

// tgid -> histogram slot in hists; filled and emptied by Track/Untrack.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TRACKED);
	__type(key, __u32);
	__type(value, __u32);
} tracked SEC(".maps");

// Per-slot log2 histograms. Counters only grow: user space reads deltas.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_TRACKED);
	__type(key, __u32);
	__type(value, struct hists);
} hists SEC(".maps");

// tgid -> open cold-start timeline (deleted at the first response write).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TIMELINES);
	__type(key, __u32);
	__type(value, struct timeline);
} timelines SEC(".maps");

// tgid -> where its wall time went while its cold start is open.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TIMELINES);
	__type(key, __u32);
	__type(value, struct anatomy);
} anatomies SEC(".maps");

// tid -> state of a thread of a process in anatomies.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_THREADS);
	__type(key, __u32);
	__type(value, struct thread);
} threads SEC(".maps");

// tgid -> 1 once user space marked the instance ready (arms EV_ACCEPT).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TIMELINES);
	__type(key, __u32);
	__type(value, __u64);
} ready SEC(".maps");

// tid -> wakeup time (run-queue delay).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_THREADS);
	__type(key, __u32);
	__type(value, __u64);
} wakeups SEC(".maps");

// tid -> network syscall entry (syscall_latency only).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_THREADS);
	__type(key, __u32);
	__type(value, struct sys_start);
} syscalls SEC(".maps");

// struct sock * -> time its oldest unread data became ready.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_SOCKETS);
	__type(key, __u64);
	__type(value, __u64);
} sk_ready SEC(".maps");

// TCP port -> tgid listening on it. Softirq context has no useful
// current task: the local port says whose socket it is.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PORTS);
	__type(key, __u32);
	__type(value, __u32);
} ports SEC(".maps");

// struct sock * -> a tracked instance's connection, open to close.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_SOCKETS);
	__type(key, __u64);
	__type(value, struct conn);
} conns SEC(".maps");

// struct sock * -> 1: a connection the router (parent_tgid) opened.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_ROUTER_CONNS);
	__type(key, __u64);
	__type(value, __u32);
} router_socks SEC(".maps");

// Local port of a router connection -> 1, while it is established.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_ROUTER_CONNS);
	__type(key, __u32);
	__type(value, __u32);
} router_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, RINGBUF_BYTES);
} events SEC(".maps");

// [0]: events dropped (ring buffer full or a map full).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

static __always_inline __u32 log2_u32(__u32 v)
{
	__u32 r, shift;

	r = (v > 0xFFFF) << 4;
	v >>= r;
	shift = (v > 0xFF) << 3;
	v >>= shift;
	r |= shift;
	shift = (v > 0xF) << 2;
	v >>= shift;
	r |= shift;
	shift = (v > 0x3) << 1;
	v >>= shift;
	r |= shift;
	r |= (v >> 1);
	return r;
}

static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 hi = v >> 32;

	if (hi)
		return log2_u32(hi) + 32;
	return log2_u32(v);
}

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lost, &zero);

	if (n)
		__sync_fetch_and_add(n, 1);
}

static __always_inline struct event *reserve(__u32 tgid, __u32 kind, __s64 arg, __u64 ts)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count_lost();
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = ts;
	e->tgid = tgid;
	e->kind = kind;
	e->arg = arg;
	return e;
}

static __always_inline void emit(__u32 tgid, __u32 kind, __s64 arg, __u64 ts)
{
	struct event *e = reserve(tgid, kind, arg, ts);

	if (e)
		bpf_ringbuf_submit(e, 0);
}

static __always_inline void record(__u32 tgid, __u32 kind, __u64 delta)
{
	__u32 *slot = bpf_map_lookup_elem(&tracked, &tgid);
	struct hists *hs;
	struct hist *h;
	__u32 b;

	if (!slot)
		return;
	hs = bpf_map_lookup_elem(&hists, slot);
	if (!hs || kind >= HIST_KINDS)
		return;
	h = &hs->h[kind];
	b = log2_u64(delta);
	if (b > HIST_BUCKETS - 1)
		b = HIST_BUCKETS - 1;
	__sync_fetch_and_add(&h->count, 1);
	__sync_fetch_and_add(&h->sum_ns, delta);
	__sync_fetch_and_add(&h->buckets[b], 1);
}

static __always_inline int is_tracked(__u32 tgid)
{
	return bpf_map_lookup_elem(&tracked, &tgid) != NULL;
}

// ---- cold-start anatomy ----

// advance accounts the time since a->last_ns to the process's state as it
// was; the exchange splits time between CPUs racing here without a lock.
static __always_inline void advance(struct anatomy *a, __u64 now)
{
	__u64 prev = __sync_lock_test_and_set(&a->last_ns, now);
	__u32 st = ANAT_BLOCKED;

	if (now <= prev)
		return;
	if (a->running > 0)
		st = ANAT_ONCPU;
	else if (a->runnable > 0)
		st = ANAT_RUNQ;
	else if (a->faulting > 0)
		st = ANAT_FAULTS;
	__sync_fetch_and_add(&a->ns[st], now - prev);
}

static __always_inline void count_state(struct anatomy *a, __u32 st, int d)
{
	switch (st) {
	case TH_RUNNING:
		__sync_fetch_and_add(&a->running, d);
		break;
	case TH_RUNNABLE:
		__sync_fetch_and_add(&a->runnable, d);
		break;
	case TH_FAULT:
		__sync_fetch_and_add(&a->faulting, d);
		break;
	}
}

// set_thread moves thread p (of a process in anatomies) to state st.
// fresh: a new thread, whatever a reused tid left behind is stale.
static __always_inline void set_thread(struct task_struct *p, __u32 st, int fresh, __u64 now)
{
	__u32 tid = p->pid, tgid = p->tgid;
	struct anatomy *a = bpf_map_lookup_elem(&anatomies, &tgid);
	struct thread *t, nt = {};
	__u64 maj;

	if (!a)
		return;
	maj = p->maj_flt;
	t = fresh ? NULL : bpf_map_lookup_elem(&threads, &tid);
	if (t && t->tgid != tgid)
		t = NULL;
	if (t && t->state == st)
		return;
	advance(a, now);
	if (t) {
		count_state(a, t->state, -1);
		if (maj > t->maj_flt)
			__sync_fetch_and_add(&a->maj_flt, maj - t->maj_flt);
		t->maj_flt = maj;
		t->state = st;
	} else {
		nt.state = st;
		nt.tgid = tgid;
		nt.maj_flt = fresh ? 0 : maj;
		if (fresh && maj)
			__sync_fetch_and_add(&a->maj_flt, maj);
		if (bpf_map_update_elem(&threads, &tid, &nt, BPF_ANY))
			count_lost();
	}
	count_state(a, st, 1);
}

// snapshot accounts up to now and copies a's counters into s.
static __always_inline void snapshot(struct anatomy *a, struct anat_snap *s, __u64 now)
{
	advance(a, now);
	s->ns[ANAT_ONCPU] = a->ns[ANAT_ONCPU];
	s->ns[ANAT_RUNQ] = a->ns[ANAT_RUNQ];
	s->ns[ANAT_FAULTS] = a->ns[ANAT_FAULTS];
	s->ns[ANAT_BLOCKED] = a->ns[ANAT_BLOCKED];
	s->maj_flt = a->maj_flt;
	s->model_bytes = a->model_bytes;
}

// emit_point sends a timeline point with tgid's anatomy so far.
static __always_inline void emit_point(__u32 tgid, __u32 kind, __s64 arg, __u64 now)
{
	struct event *e = reserve(tgid, kind, arg, now);
	struct anatomy *a;

	if (!e)
		return;
	a = bpf_map_lookup_elem(&anatomies, &tgid);
	if (a)
		snapshot(a, &e->anat, now);
	bpf_ringbuf_submit(e, 0);
}

// ---- files ----

// current's open file for fd, or NULL.
static __always_inline struct file *fd_file(__s64 fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *f = NULL;

	if (!fdt || fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

static __always_inline int fd_is_socket(__s64 fd)
{
	struct file *f = fd_file(fd);

	if (!f)
		return 0;
	return (BPF_CORE_READ(f, f_inode, i_mode) & S_IFMT) == S_IFSOCK;
}

// fd is a regular file whose name ends in ".onnx".
static __always_inline int fd_is_model(__s64 fd)
{
	struct file *f = fd_file(fd);
	const unsigned char *name;
	char buf[64];
	__u32 len;

	if (!f || (BPF_CORE_READ(f, f_inode, i_mode) & S_IFMT) != S_IFREG)
		return 0;
	len = BPF_CORE_READ(f, f_path.dentry, d_name.len);
	name = BPF_CORE_READ(f, f_path.dentry, d_name.name);
	if (len < 5 || len > sizeof(buf) - 1)
		return 0;
	if (bpf_probe_read_kernel(buf, sizeof(buf), name))
		return 0;
	len -= 5;
	if (len > sizeof(buf) - 6)
		return 0;
	return buf[len] == '.' && buf[len + 1] == 'o' && buf[len + 2] == 'n' && buf[len + 3] == 'n' &&
	       buf[len + 4] == 'x';
}

// ---- syscalls (attached only during cold starts, or with syscall_latency) ----

// Network syscalls timed for tracked instances (read/write family only on sockets).
static __always_inline int timed_syscall(long nr)
{
	switch (nr) {
	case NR_read:
	case NR_write:
	case NR_readv:
	case NR_writev:
	case NR_connect:
	case NR_accept:
	case NR_accept4:
	case NR_sendto:
	case NR_recvfrom:
	case NR_sendmsg:
	case NR_recvmsg:
	case NR_recvmmsg:
	case NR_sendmmsg:
		return 1;
	}
	return 0;
}

static __always_inline int fd_syscall(long nr)
{
	return nr == NR_read || nr == NR_write || nr == NR_readv || nr == NR_writev;
}

// Local TCP port of socket fd, or 0.
static __always_inline __u32 fd_tcp_port(__s64 fd)
{
	struct file *f = fd_file(fd);
	struct socket *sock;
	struct sock *sk;

	if (!f || (BPF_CORE_READ(f, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	sock = BPF_CORE_READ(f, private_data);
	sk = BPF_CORE_READ(sock, sk);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	return BPF_CORE_READ(sk, __sk_common.skc_num);
}

static __always_inline int file_read(long nr)
{
	return nr == NR_read || nr == NR_pread64 || nr == NR_readv || nr == NR_preadv;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(on_sys_enter, struct pt_regs *regs, long id)
{
	__u64 pid_tgid;
	__u32 tid;
	struct sys_start s;

	if (!syscall_latency || !timed_syscall(id))
		return 0;
	pid_tgid = bpf_get_current_pid_tgid();
	if (!is_tracked(pid_tgid >> 32))
		return 0;
	if (fd_syscall(id) && !fd_is_socket((int)regs->di))
		return 0;
	tid = (__u32)pid_tgid;
	s.ts_ns = bpf_ktime_get_ns();
	s.nr = id;
	bpf_map_update_elem(&syscalls, &tid, &s, BPF_ANY);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(on_sys_exit, struct pt_regs *regs, long ret)
{
	long nr = regs->orig_ax;
	__u64 pid_tgid, now;
	__u32 tid, tgid;
	struct sys_start *s;
	struct anatomy *a;

	if (file_read(nr) && ret > 0) {
		tgid = bpf_get_current_pid_tgid() >> 32;
		a = bpf_map_lookup_elem(&anatomies, &tgid);
		if (a && fd_is_model((int)regs->di))
			__sync_fetch_and_add(&a->model_bytes, ret);
	}
	if (!syscall_latency || !timed_syscall(nr))
		return 0;
	pid_tgid = bpf_get_current_pid_tgid();
	tid = (__u32)pid_tgid;
	s = bpf_map_lookup_elem(&syscalls, &tid);
	if (!s)
		return 0;
	now = bpf_ktime_get_ns();
	if (s->nr == nr && now >= s->ts_ns)
		record(pid_tgid >> 32, HIST_SYSCALL, now - s->ts_ns);
	bpf_map_delete_elem(&syscalls, &tid);
	return 0;
}

// ---- processes and the scheduler ----

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 tgid = p->tgid, tid = p->pid;
	__u32 ptgid = p->real_parent->tgid;
	struct timeline t = {};
	struct anatomy a = {};
	struct thread th = {};
	__u64 now;

	if (!(parent_tgid != 0 && ptgid == parent_tgid) && !is_tracked(tgid))
		return 0;
	now = bpf_ktime_get_ns();
	// Fresh entries: a reused pid starts over. exec leaves one thread,
	// this one, on a CPU.
	if (bpf_map_update_elem(&timelines, &tgid, &t, BPF_ANY))
		count_lost();
	a.last_ns = now;
	a.running = 1;
	if (bpf_map_update_elem(&anatomies, &tgid, &a, BPF_ANY))
		count_lost();
	th.state = TH_RUNNING;
	th.tgid = tgid;
	th.maj_flt = p->maj_flt;
	bpf_map_update_elem(&threads, &tid, &th, BPF_ANY);
	bpf_map_delete_elem(&ready, &tgid);
	emit_point(tgid, EV_EXEC, ptgid, now);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *p, bool group_dead)
{
	__u32 tid = p->pid;
	__u32 tgid = p->tgid;
	struct thread *t;
	struct anatomy *a;
	int known;

	bpf_map_delete_elem(&wakeups, &tid);
	bpf_map_delete_elem(&syscalls, &tid);
	t = bpf_map_lookup_elem(&threads, &tid);
	if (t) {
		a = bpf_map_lookup_elem(&anatomies, &tgid);
		if (a && t->tgid == tgid) {
			advance(a, bpf_ktime_get_ns());
			count_state(a, t->state, -1);
		}
		bpf_map_delete_elem(&threads, &tid);
	}
	if (!group_dead)
		return 0;
	known = bpf_map_delete_elem(&tracked, &tgid) == 0;
	known |= bpf_map_delete_elem(&timelines, &tgid) == 0;
	known |= bpf_map_delete_elem(&anatomies, &tgid) == 0;
	bpf_map_delete_elem(&ready, &tgid);
	if (known)
		emit(tgid, EV_EXIT, 0, bpf_ktime_get_ns());
	return 0;
}

static __always_inline void mark_wakeup(struct task_struct *p, __u64 now)
{
	__u32 tid = p->pid;

	if (!is_tracked(p->tgid))
		return;
	bpf_map_update_elem(&wakeups, &tid, &now, BPF_ANY);
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(on_wakeup, struct task_struct *p)
{
	__u64 now = bpf_ktime_get_ns();

	mark_wakeup(p, now);
	set_thread(p, TH_RUNNABLE, 0, now);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(on_wakeup_new, struct task_struct *p)
{
	__u64 now = bpf_ktime_get_ns();

	mark_wakeup(p, now);
	set_thread(p, TH_RUNNABLE, 1, now);
	return 0;
}

// in_fault: p, going to sleep, is inside an exception (a page fault), not a
// system call: x86's exception entry leaves orig_ax -1, a syscall its number.
static __always_inline int in_fault(struct task_struct *p)
{
	struct pt_regs *regs;

	if (p->flags & PF_KTHREAD)
		return 0;
	regs = (struct pt_regs *)bpf_task_pt_regs(p);
	if (!regs)
		return 0;
	return (long)BPF_CORE_READ(regs, orig_ax) == -1;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(on_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	__u32 tid = next->pid, ptgid = prev->tgid;
	__u64 *ts, now = bpf_ktime_get_ns();

	if (prev_state == TASK_RUNNING) {
		// Preempted while runnable: it waits in the run queue from now.
		mark_wakeup(prev, now);
		set_thread(prev, TH_RUNNABLE, 0, now);
	} else if (bpf_map_lookup_elem(&anatomies, &ptgid)) {
		set_thread(prev, in_fault(prev) ? TH_FAULT : TH_BLOCKED, 0, now);
	}
	if (tid == 0)
		return 0;
	set_thread(next, TH_RUNNING, 0, now);
	ts = bpf_map_lookup_elem(&wakeups, &tid);
	if (!ts)
		return 0;
	if (now >= *ts)
		record(next->tgid, HIST_RUNQ, now - *ts);
	bpf_map_delete_elem(&wakeups, &tid);
	return 0;
}

// ---- sockets ----

SEC("tp_btf/sk_data_ready")
int BPF_PROG(on_data_ready, const struct sock *sk)
{
	__u32 port;
	__u64 key = (__u64)sk, now;

	if (sk->sk_protocol != IPPROTO_TCP || sk->__sk_common.skc_state == TCP_LISTEN)
		return 0;
	port = sk->__sk_common.skc_num;
	if (!bpf_map_lookup_elem(&ports, &port))
		return 0;
	now = bpf_ktime_get_ns();
	// Keep the oldest unread arrival.
	bpf_map_update_elem(&sk_ready, &key, &now, BPF_NOEXIST);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(on_recv_length, struct sock *sk, int ret, int flags)
{
	__u64 key = (__u64)sk, now;
	__u64 *ts;

	if (ret <= 0 || (flags & MSG_PEEK))
		return 0;
	ts = bpf_map_lookup_elem(&sk_ready, &key);
	if (!ts)
		return 0;
	now = bpf_ktime_get_ns();
	if (now >= *ts)
		record(bpf_get_current_pid_tgid() >> 32, HIST_SOCKQ, now - *ts);
	bpf_map_delete_elem(&sk_ready, &key);
	return 0;
}

// The cold-start response: the first send on the connection accepted after
// the ready mark, by the instance itself.
SEC("tp_btf/sock_send_length")
int BPF_PROG(on_send_length, struct sock *sk, int ret, int flags)
{
	__u32 tgid;
	struct timeline *t;

	if (ret <= 0)
		return 0;
	tgid = bpf_get_current_pid_tgid() >> 32;
	t = bpf_map_lookup_elem(&timelines, &tgid);
	if (!t || !t->accept_ns || t->accept_sk != (__u64)sk)
		return 0;
	emit_point(tgid, EV_FIRST_WRITE, ret, bpf_ktime_get_ns());
	// The cold start is over: stop following this process.
	bpf_map_delete_elem(&timelines, &tgid);
	bpf_map_delete_elem(&anatomies, &tgid);
	bpf_map_delete_elem(&ready, &tgid);
	return 0;
}

static __always_inline int addr_loopback(const struct sock *sk, __u16 family)
{
	__u32 a4;

	if (family == AF_INET)
		return (bpf_ntohl(sk->__sk_common.skc_daddr) >> 24) == 127;
	if (family != AF_INET6)
		return 0;
	if (sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[0] || sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[1])
		return 0;
	a4 = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[2];
	if (a4 == 0) // ::1
		return sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[3] == bpf_htonl(1);
	if (a4 == bpf_htonl(0xffff)) // ::ffff:127.x.y.z
		return (bpf_ntohl(sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[3]) >> 24) == 127;
	return 0;
}

static __always_inline __u8 classify(const struct sock *sk, __u8 dir)
{
	__u16 family = sk->__sk_common.skc_family;
	__u16 dport = bpf_ntohs(sk->__sk_common.skc_dport);
	__u32 key = dport;

	if (dport == DNS_PORT)
		return PEER_DNS;
	if (!addr_loopback(sk, family))
		return PEER_OTHER;
	if (dir == DIR_INBOUND && bpf_map_lookup_elem(&router_ports, &key))
		return PEER_ROUTER;
	return PEER_LOOPBACK;
}

static __always_inline void fill_peer(struct conn_payload *c, const struct sock *sk)
{
	c->family = sk->__sk_common.skc_family;
	c->port = bpf_ntohs(sk->__sk_common.skc_dport);
	if (c->family == AF_INET)
		bpf_probe_read_kernel(c->addr, 4, &sk->__sk_common.skc_daddr);
	else
		bpf_probe_read_kernel(c->addr, 16, &sk->__sk_common.skc_v6_daddr);
}

static __always_inline void conn_open(const struct sock *sk, __u32 tgid, __u8 dir, __u64 now)
{
	__u64 key = (__u64)sk;
	struct conn c = {.tgid = tgid, .direction = dir, .start_ns = now};
	struct event *e;

	c.peer_class = classify(sk, dir);
	if (bpf_map_update_elem(&conns, &key, &c, BPF_ANY))
		count_lost();
	e = reserve(tgid, EV_CONN_OPEN, 0, now);
	if (!e)
		return;
	fill_peer(&e->conn, sk);
	e->conn.direction = dir;
	e->conn.peer_class = c.peer_class;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void conn_close(const struct sock *sk, __u64 now)
{
	__u64 key = (__u64)sk;
	struct conn *c = bpf_map_lookup_elem(&conns, &key);
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	struct event *e;

	if (!c)
		return;
	e = reserve(c->tgid, EV_CONN_CLOSE, 0, now);
	if (e) {
		fill_peer(&e->conn, sk);
		e->conn.direction = c->direction;
		e->conn.peer_class = c->peer_class;
		e->conn.rx_bytes = BPF_CORE_READ(tp, bytes_received);
		e->conn.tx_bytes = BPF_CORE_READ(tp, bytes_acked);
		e->conn.dur_ns = now - c->start_ns;
		bpf_ringbuf_submit(e, 0);
	}
	bpf_map_delete_elem(&conns, &key);
}

// Connection state changes: one event per transition of a TCP socket, not
// per syscall. Listening, passive and active opens, and closes.
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_sock_state, const struct sock *sk, const int oldstate, const int newstate)
{
	__u64 key = (__u64)sk, now;
	__u32 port, tgid, *owner, rkey;
	struct timeline *t;

	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	port = sk->__sk_common.skc_num;
	switch (newstate) {
	case TCP_LISTEN:
		// Process context: current is the listener.
		tgid = bpf_get_current_pid_tgid() >> 32;
		if (!bpf_map_lookup_elem(&timelines, &tgid) && !is_tracked(tgid))
			return 0;
		now = bpf_ktime_get_ns();
		if (bpf_map_update_elem(&ports, &port, &tgid, BPF_ANY))
			count_lost();
		emit(tgid, EV_PORT, port, now);
		emit_point(tgid, EV_LISTEN, port, now);
		return 0;
	case TCP_SYN_SENT:
		// Process context (connect): current opened it.
		tgid = bpf_get_current_pid_tgid() >> 32;
		if (parent_tgid != 0 && tgid == parent_tgid) {
			rkey = 1;
			bpf_map_update_elem(&router_socks, &key, &rkey, BPF_ANY);
			return 0;
		}
		if (is_tracked(tgid))
			conn_open(sk, tgid, DIR_OUTBOUND, bpf_ktime_get_ns());
		return 0;
	case TCP_ESTABLISHED:
		if (oldstate == TCP_SYN_SENT) {
			// Softirq: the router's connection now has its local port.
			if (bpf_map_lookup_elem(&router_socks, &key)) {
				rkey = port;
				bpf_map_update_elem(&router_ports, &rkey, &rkey, BPF_ANY);
			}
			return 0;
		}
		if (oldstate != TCP_SYN_RECV)
			return 0;
		// Passive open, in softirq: the local port says whose it is.
		owner = bpf_map_lookup_elem(&ports, &port);
		if (!owner)
			return 0;
		tgid = *owner;
		now = bpf_ktime_get_ns();
		if (is_tracked(tgid))
			conn_open(sk, tgid, DIR_INBOUND, now);
		t = bpf_map_lookup_elem(&timelines, &tgid);
		if (!t)
			return 0;
		if (!t->first_accept_ns) {
			t->first_accept_ns = now;
			emit(tgid, EV_FIRST_ACCEPT, 0, now);
		}
		if (!t->accept_ns && bpf_map_lookup_elem(&ready, &tgid)) {
			t->accept_ns = now;
			t->accept_sk = key;
			emit_point(tgid, EV_ACCEPT, 0, now);
		}
		return 0;
	case TCP_CLOSE:
		break;
	default:
		return 0;
	}
	// A closed socket's address may be reused by the next one.
	bpf_map_delete_elem(&sk_ready, &key);
	now = bpf_ktime_get_ns();
	conn_close(sk, now);
	if (bpf_map_delete_elem(&router_socks, &key) == 0) {
		rkey = port;
		bpf_map_delete_elem(&router_ports, &rkey);
	}
	if (oldstate != TCP_LISTEN)
		return 0;
	tgid = bpf_get_current_pid_tgid() >> 32;
	owner = bpf_map_lookup_elem(&ports, &port);
	if (owner && *owner == tgid)
		bpf_map_delete_elem(&ports, &port);
	return 0;
}
