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
//    its bytes at close; outbound ones to anything but DNS are reported;
//    and every connection to its listening Unix sockets (the router's framed
//    transport), which fires no TCP tracepoint: seen at connect through the
//    listener's sk_data_ready, its reads through sock_recv_length.
//
// Every program is tp_btf (BTF-typed raw tracepoint). Only on_sys_exit and
// on_sys_enter sit on the system-call path, and user space attaches them
// only while a tracked instance's cold start is open (or always, when
// network syscall latency is asked for): a syscall tracepoint puts every
// task's system calls on the kernel's slow path, whatever the program does.
// The programs that serve only a cold start (on_wakeup, on_send_length,
// on_sys_exit) are attached only while one is open too: whatever a program
// does, the machine's every wakeup or send pays for its call. What stays
// attached does a storage lookup or two for everyone but the tracked
// instances.
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
#define UNIX_PENDING_NS 1000000000ULL // a connection's first data comes sooner, or never

#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define S_IFREG 0100000
#define TASK_RUNNING 0
#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define DNS_PORT 53
#define PF_KTHREAD 0x00200000
#define RCV_SHUTDOWN 1
#define MSG_PEEK 2

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
	EV_EXEC = 1,         // arg: the task's start (its fork, ktime ns); v: anatomy
	EV_LISTEN = 3,       // arg: port; v: anatomy
	EV_FIRST_ACCEPT = 4, // first connection established to the instance (usually the engine's readiness poll)
	EV_ACCEPT = 5,       // first one after user space marked the instance ready; v: anatomy
	EV_FIRST_WRITE = 6,  // first send on that connection; arg: bytes; v: anatomy
	EV_EXIT = 7,         // the whole thread group exited
	EV_PORT = 8,         // a tracked or starting instance listens on TCP port arg
	EV_CONN_OPEN = 9,    // a tracked instance's connection opened; v: struct conn_payload
	EV_CONN_CLOSE = 10,  // ... and closed, with its bytes
	EV_READY = 11,       // the instance sent its first answer saying it is ready (tagged: ready_priority); arg: bytes; v: anatomy
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
	__u64 ready_ns;  // its tagged ready answer's send (ready_priority)
};

// Per task (thread), in task local storage: a pointer away from the task,
// so the scheduler programs pay no hash lookup for the machine's other
// tasks. flags cache the task's process's membership of tracked and
// anatomies, valid while gen equals the current generation.
#define TI_TRACKED 1
#define TI_ANATOMY 2
struct task_info {
	__u64 gen;
	__u32 flags;
	__u32 slot;      // hists slot of the task's process, when TI_TRACKED
	__u32 state;     // enum thread_state, for the anatomy
	__u32 pad;
	__u64 maj_flt;   // the thread's maj_flt when last accounted
	__u64 run_delay; // the thread's sched_info.run_delay when last switched out
	__u64 sys_ns;    // network syscall entry (syscall_latency)
	__u64 sys_nr;
};

// Per socket, in socket local storage: only sockets of tracked instances
// (and the router's connections) get one, so the per-packet and per-read
// programs return on a NULL pointer for every other socket.
#define SK_CONN 1   // a tracked instance's connection
#define SK_ROUTER 2 // a connection the router opened
#define SK_COLD 4   // carries a cold start's first request
struct sk_info {
	__u64 ready_ns; // oldest unread data arrived; 0: none
	__u64 start_ns;
	__u64 rx_bytes; // read by the instance (Unix sockets: TCP counts its own)
	__u32 tgid;
	__u8 flags, direction, peer_class, pad;
	__u32 ready_gen; // TCP: tcp_read_on when ready_ns was stored
	__u32 pad2;
};

// Set by the loader: the tgid whose children get a timeline from exec on
// (the serve process, which is also the router: its connections are "router").
const volatile __u32 parent_tgid = 0;
// Set by the loader: a command name (comm, 15 characters at most) whose
// exec anywhere on the machine gets a timeline, as the children of
// parent_tgid do: the node agent's runtime processes, started by runc in
// pods, not by a parent it knows. Empty: none. Exec is rare, so comparing
// 16 bytes on each costs nothing.
const volatile char exec_comm[16] = {};
// Set by the loader: time network syscalls of tracked instances.
const volatile __u32 syscall_latency = 0;
// Set by the loader: time request bytes in tracked instances' receive
// queues. The Unix socket programs run without it too (they see the
// connections), and then skip the timing.
const volatile __u32 socket_queue = 0;
// Set by the loader: the socket priorities (SO_PRIORITY) a runtime in a
// Knative pod gives two connections of its cold start (runtime/server,
// listener.ReadyPriority and RequestPriority): the one of its first answer
// saying it is ready, just before that answer, and the one of its first
// request, just before the response. The kernel cannot tell a readiness
// probe's connection from the request's; the runtime can, and a socket
// priority is what a program at the send reads at no cost. 0: off.
const volatile __u32 ready_priority = 0;
const volatile __u32 request_priority = 0;

// Generations of tracked and anatomies: user space bumps user_gen after
// changing them, the programs bump bpf_gen; a task's cached flags are
// recomputed when either moved.
volatile __u32 user_gen = 1;
volatile __u32 bpf_gen = 0;
// Entries put in unix_pending and not yet adopted: while 0, a Unix
// socket's data costs no lookup there (most of them are the router's
// ends, reading answers). Entries the LRU evicts keep it above 0: the
// lookups then go on, which is only their cost.
volatile __u32 unix_pending_n = 0;
// Set by user space while on_tcp_read is attached: while a tracked
// instance has an open TCP connection. Over serve's framed socket that is
// only the engine's readiness polls and scrapes, so a TCP packet's
// sk_data_ready returns here, with no storage lookup. Each attach sets a
// new value (a generation, never 0): an arrival stored under an earlier
// one may have been read while on_tcp_read was detached, unseen, so the
// next arrival replaces it rather than being timed from it.
volatile __u32 tcp_read_on = 0;

// tgid -> histogram slot in hists; filled and emptied by Track/Untrack.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TRACKED);
	__type(key, __u32);
	__type(value, __u32);
} tracked SEC(".maps");

// Per-slot log2 histograms, one copy per CPU: an instance's threads run
// on every CPU, and shared counters would bounce their cache lines
// between them on every sample. Counters only grow: user space sums the
// CPUs' copies and reads deltas.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
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

// tgid -> 1 once user space marked the instance ready (arms EV_ACCEPT).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TIMELINES);
	__type(key, __u32);
	__type(value, __u64);
} ready SEC(".maps");

// TCP port -> tgid listening on it. Softirq context has no useful
// current task: the local port says whose socket it is.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PORTS);
	__type(key, __u32);
	__type(value, __u32);
} ports SEC(".maps");

// Local port of a router connection -> 1, while it is established.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_ROUTER_CONNS);
	__type(key, __u32);
	__type(value, __u32);
} router_ports SEC(".maps");

// A connection to a followed instance's Unix listener, from its connect to
// its first data (unix_connect, unix_adopt): struct sock * -> what its
// storage will say. LRU: a connection closed before any data leaves its
// entry behind.
struct unix_pending {
	__u64 start_ns;
	__u32 tgid;
	__u8 conn;  // counted: the instance is tracked
	__u8 cold;  // the cold-start request's connection
	__u8 class; // enum peer_class
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_PORTS);
	__type(key, __u64);
	__type(value, struct unix_pending);
} unix_pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_info);
} task_infos SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sk_info);
} sk_infos SEC(".maps");

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

// record adds a sample to slot's histogram of kind, on this CPU's copy
// (atomically: a preempted program may share the copy with the next one).
static __always_inline void record(__u32 slot, __u32 kind, __u64 delta)
{
	struct hists *hs;
	struct hist *h;
	__u32 b;

	hs = bpf_map_lookup_elem(&hists, &slot);
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

// info returns task p's storage, its flags current.
static __always_inline struct task_info *info(struct task_struct *p)
{
	struct task_info *ti = bpf_task_storage_get(&task_infos, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	__u32 tgid, *slot;
	__u64 gen;

	if (!ti)
		return NULL;
	gen = ((__u64)user_gen << 32) | bpf_gen;
	if (ti->gen == gen)
		return ti;
	// Generation first, maps second: a change racing with this is seen
	// now or at the next bump.
	tgid = p->tgid;
	ti->flags = 0;
	slot = bpf_map_lookup_elem(&tracked, &tgid);
	if (slot) {
		ti->flags |= TI_TRACKED;
		ti->slot = *slot;
	} else {
		ti->run_delay = 0; // tracked again later: start from its next run
	}
	if (bpf_map_lookup_elem(&anatomies, &tgid))
		ti->flags |= TI_ANATOMY;
	ti->gen = gen;
	return ti;
}

static __always_inline void bump_gen(void)
{
	__sync_fetch_and_add(&bpf_gen, 1);
}

// set_thread moves thread p, whose process is in anatomies, to state st.
static __always_inline void set_thread(struct task_struct *p, struct task_info *ti, __u32 st, __u64 now)
{
	__u32 tgid = p->tgid;
	struct anatomy *a;
	__u64 maj;

	if (ti->state == st)
		return;
	a = bpf_map_lookup_elem(&anatomies, &tgid);
	if (!a)
		return;
	maj = p->maj_flt;
	advance(a, now);
	count_state(a, ti->state, -1);
	count_state(a, st, 1);
	if (maj > ti->maj_flt)
		__sync_fetch_and_add(&a->maj_flt, maj - ti->maj_flt);
	ti->maj_flt = maj;
	ti->state = st;
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
	struct task_info *ti;

	if (!syscall_latency || !timed_syscall(id))
		return 0;
	ti = info(bpf_get_current_task_btf());
	if (!ti || !(ti->flags & TI_TRACKED))
		return 0;
	if (fd_syscall(id) && !fd_is_socket((int)regs->di))
		return 0;
	ti->sys_ns = bpf_ktime_get_ns();
	ti->sys_nr = id;
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(on_sys_exit, struct pt_regs *regs, long ret)
{
	long nr = regs->orig_ax;
	struct task_info *ti;
	struct anatomy *a;
	__u64 now;
	__u32 tgid;

	if (file_read(nr) && ret > 0) {
		tgid = bpf_get_current_pid_tgid() >> 32;
		a = bpf_map_lookup_elem(&anatomies, &tgid);
		if (a && fd_is_model((int)regs->di))
			__sync_fetch_and_add(&a->model_bytes, ret);
	}
	if (!syscall_latency || !timed_syscall(nr))
		return 0;
	ti = info(bpf_get_current_task_btf());
	if (!ti || !ti->sys_ns)
		return 0;
	now = bpf_ktime_get_ns();
	if (ti->sys_nr == nr && now >= ti->sys_ns && (ti->flags & TI_TRACKED))
		record(ti->slot, HIST_SYSCALL, now - ti->sys_ns);
	ti->sys_ns = 0;
	return 0;
}

// ---- processes and the scheduler ----

// comm_watched: p, just exec'd, runs the command exec_comm names.
static __always_inline int comm_watched(struct task_struct *p)
{
	char comm[16];
	int i;

	if (!exec_comm[0])
		return 0;
	if (bpf_probe_read_kernel(comm, sizeof(comm), p->comm))
		return 0;
	for (i = 0; i < 16; i++) {
		if (comm[i] != exec_comm[i])
			return 0;
		if (!comm[i])
			break;
	}
	return 1;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 tgid = p->tgid;
	__u32 ptgid = p->real_parent->tgid;
	struct timeline t = {};
	struct anatomy a = {};
	struct task_info *ti;
	__u64 now;

	if (!(parent_tgid != 0 && ptgid == parent_tgid) && !is_tracked(tgid) && !comm_watched(p))
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
	bump_gen();
	ti = info(p);
	if (ti) {
		ti->state = TH_RUNNING;
		ti->maj_flt = p->maj_flt;
	}
	bpf_map_delete_elem(&ready, &tgid);
	// A container's process was forked by runc well before its exec: its
	// start is the container's.
	emit_point(tgid, EV_EXEC, p->start_time, now);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *p, bool group_dead)
{
	__u32 tgid = p->tgid;
	struct task_info *ti;
	struct anatomy *a;
	int known;

	ti = bpf_task_storage_get(&task_infos, p, 0, 0);
	if (ti && ti->state != TH_BLOCKED) {
		a = bpf_map_lookup_elem(&anatomies, &tgid);
		if (a) {
			advance(a, bpf_ktime_get_ns());
			count_state(a, ti->state, -1);
		}
		ti->state = TH_BLOCKED;
	}
	if (!group_dead)
		return 0;
	known = bpf_map_delete_elem(&tracked, &tgid) == 0;
	known |= bpf_map_delete_elem(&timelines, &tgid) == 0;
	known |= bpf_map_delete_elem(&anatomies, &tgid) == 0;
	bpf_map_delete_elem(&ready, &tgid);
	if (known) {
		bump_gen();
		emit(tgid, EV_EXIT, 0, bpf_ktime_get_ns());
	}
	return 0;
}

// runnable: p was woken or preempted: it waits for a CPU from now.
static __always_inline void runnable(struct task_struct *p, struct task_info *ti, __u64 now)
{
	if (ti && (ti->flags & TI_ANATOMY))
		set_thread(p, ti, TH_RUNNABLE, now);
}

// Only the anatomy needs wakeups (the run-queue delay comes from the
// scheduler's own sched_info): user space attaches this program while a
// tracked instance's cold start is open.
SEC("tp_btf/sched_wakeup")
int BPF_PROG(on_wakeup, struct task_struct *p)
{
	runnable(p, info(p), bpf_ktime_get_ns());
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(on_wakeup_new, struct task_struct *p)
{
	runnable(p, info(p), bpf_ktime_get_ns());
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

// Run-queue delay of tracked threads and the anatomy's thread states.
// Always attached: the anatomy needs every switch of a process from its
// exec on (a switch missed leaves a thread's state stale until its next
// one), and user space learns of an exec only after it. For the machine's
// other tasks it costs two storage lookups.
SEC("tp_btf/sched_switch")
int BPF_PROG(on_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	struct task_info *ti;
	__u64 now, delay;

	ti = info(prev);
	if (ti && ti->flags) {
		if (ti->flags & TI_TRACKED) {
			// The scheduler added the wait that preceded this run to
			// run_delay when prev arrived on the CPU: one wait per run.
			delay = prev->sched_info.run_delay;
			if (ti->run_delay && delay > ti->run_delay)
				record(ti->slot, HIST_RUNQ, delay - ti->run_delay);
			ti->run_delay = delay ? delay : 1;
		}
		if (ti->flags & TI_ANATOMY) {
			now = bpf_ktime_get_ns();
			if (prev_state == TASK_RUNNING)
				runnable(prev, ti, now);
			else
				set_thread(prev, ti, in_fault(prev) ? TH_FAULT : TH_BLOCKED, now);
		}
	}
	if (next->pid == 0)
		return 0;
	ti = info(next);
	if (ti && (ti->flags & TI_ANATOMY))
		set_thread(next, ti, TH_RUNNING, bpf_ktime_get_ns());
	return 0;
}

// ---- sockets ----

static __always_inline void unix_connect(const struct sock *lsk);
static __always_inline struct sk_info *unix_adopt(const struct sock *sk);

// Data (or, on a Unix listener, a connection) arrived on a socket. Always
// attached: a Unix socket's connect fires nothing else the programs can
// use (no inet_sock_set_state), and its listener's sk_data_ready runs in
// the connecting process's context, right after the connection is queued.
SEC("tp_btf/sk_data_ready")
int BPF_PROG(on_data_ready, const struct sock *sk)
{
	struct sk_info *si;

	if (sk->__sk_common.skc_family == AF_UNIX) {
		if (sk->__sk_common.skc_state == TCP_LISTEN) {
			unix_connect(sk);
			return 0;
		}
		// No storage at all (the router's end, reading answers): no
		// helper call.
		si = sk->sk_bpf_storage ? bpf_sk_storage_get(&sk_infos, (void *)sk, 0, 0) : NULL;
		if (!si && unix_pending_n)
			si = unix_adopt(sk);
		// A Unix stream queues one skb per send: with one queued, this
		// data is the oldest unread, whatever a read unseen (before
		// on_sock_read was attached) left in ready_ns.
		if (socket_queue && si && (si->flags & SK_CONN) && sk->sk_receive_queue.qlen <= 1)
			si->ready_ns = bpf_ktime_get_ns();
	} else {
		__u32 gen = tcp_read_on;

		if (!socket_queue || !gen || !sk->sk_bpf_storage)
			return 0;
		si = bpf_sk_storage_get(&sk_infos, (void *)sk, 0, 0);
		if (si && si->ready_gen != gen) {
			si->ready_ns = 0; // stored before a detach: read unseen
			si->ready_gen = gen;
		}
	}
	// Keep the oldest unread arrival.
	if (socket_queue && si && (si->flags & SK_CONN) && !si->ready_ns)
		si->ready_ns = bpf_ktime_get_ns();
	return 0;
}

// A read took data from a tracked instance's connection. tcp_rcv_space_adjust
// runs for each buffer a TCP read copies (recvmsg, splice, zero-copy), and
// only then: not for a read that finds the queue empty (Go reads until
// EAGAIN), nor for other socket families, as sock_recv_length did, at half
// the runs per request. A MSG_PEEK read counts too (no instance peeks).
SEC("tp_btf/tcp_rcv_space_adjust")
int BPF_PROG(on_tcp_read, struct sock *sk)
{
	struct task_info *ti;
	struct sk_info *si;
	__u64 now;

	if (!sk->sk_bpf_storage)
		return 0;
	si = bpf_sk_storage_get(&sk_infos, sk, 0, 0);
	if (!si || !si->ready_ns)
		return 0;
	now = bpf_ktime_get_ns();
	ti = info(bpf_get_current_task_btf());
	if (now >= si->ready_ns && ti && (ti->flags & TI_TRACKED))
		record(ti->slot, HIST_SOCKQ, now - si->ready_ns);
	si->ready_ns = 0;
	return 0;
}

// The cold-start response: the first send on the connection accepted after
// the ready mark, by the instance itself. Attached by user space while a
// tracked instance's cold start is open: sends are per request.
static __always_inline void done_cold(__u32 tgid)
{
	bpf_map_delete_elem(&timelines, &tgid);
	bpf_map_delete_elem(&anatomies, &tgid);
	bpf_map_delete_elem(&ready, &tgid);
	bump_gen();
}

// tagged_send is a send on a connection the runtime tagged (ready_priority,
// request_priority): its ready answer, or its first response, whose
// connection's accept is the time the connection was established
// (conn_open, for a tracked instance).
static __always_inline int tagged_send(struct sock *sk, __u32 prio, int ret)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct timeline *t = bpf_map_lookup_elem(&timelines, &tgid);
	struct sk_info *si;
	__u64 now;

	if (!t)
		return 0;
	now = bpf_ktime_get_ns();
	if (prio == ready_priority) {
		if (!t->ready_ns) {
			t->ready_ns = now;
			emit_point(tgid, EV_READY, ret, now);
		}
		return 0;
	}
	if (t->accept_ns)
		return 0;
	si = bpf_sk_storage_get(&sk_infos, sk, 0, 0);
	t->accept_ns = now;
	// The accept is in the past: no anatomy snapshot for it (arg 1).
	if (si && (si->flags & SK_CONN) && si->start_ns && si->start_ns <= now)
		emit(tgid, EV_ACCEPT, 1, si->start_ns);
	emit_point(tgid, EV_FIRST_WRITE, ret, now);
	done_cold(tgid);
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(on_send_length, struct sock *sk, int ret, int flags)
{
	__u32 tgid, prio;
	struct timeline *t;
	struct sk_info *si;

	if (ret <= 0)
		return 0;
	if (request_priority) {
		prio = sk->sk_priority;
		if (prio && (prio == ready_priority || prio == request_priority))
			return tagged_send(sk, prio, ret);
	}
	si = bpf_sk_storage_get(&sk_infos, sk, 0, 0);
	if (!si || !(si->flags & SK_COLD))
		return 0;
	tgid = bpf_get_current_pid_tgid() >> 32;
	t = bpf_map_lookup_elem(&timelines, &tgid);
	if (!t || !t->accept_ns || t->accept_sk != (__u64)sk)
		return 0;
	emit_point(tgid, EV_FIRST_WRITE, ret, bpf_ktime_get_ns());
	// The cold start is over: stop following this process.
	si->flags &= ~SK_COLD;
	done_cold(tgid);
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
	if (c->family == AF_UNIX)
		return; // no address: the peer is the process that connected
	c->port = bpf_ntohs(sk->__sk_common.skc_dport);
	if (c->family == AF_INET)
		bpf_probe_read_kernel(c->addr, 4, &sk->__sk_common.skc_daddr);
	else
		bpf_probe_read_kernel(c->addr, 16, &sk->__sk_common.skc_v6_daddr);
}

static __always_inline void conn_open(const struct sock *sk, __u32 tgid, __u8 dir, __u8 class, __u64 now)
{
	struct sk_info *si = bpf_sk_storage_get(&sk_infos, (void *)sk, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	struct event *e;

	if (!si) {
		count_lost();
		return;
	}
	si->flags |= SK_CONN;
	si->tgid = tgid;
	si->direction = dir;
	si->peer_class = class;
	si->start_ns = now;
	si->rx_bytes = 0;
	e = reserve(tgid, EV_CONN_OPEN, 0, now);
	if (!e)
		return;
	fill_peer(&e->conn, sk);
	e->conn.direction = dir;
	e->conn.peer_class = class;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void conn_close(const struct sock *sk, struct sk_info *si, __u64 now)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	struct event *e;

	si->flags &= ~SK_CONN;
	e = reserve(si->tgid, EV_CONN_CLOSE, 0, now);
	if (!e)
		return;
	fill_peer(&e->conn, sk);
	e->conn.direction = si->direction;
	e->conn.peer_class = si->peer_class;
	if (e->conn.family == AF_UNIX) {
		// Unix sockets keep no counters: what the instance read. What it
		// sent would need its sends, which no attached program sees.
		e->conn.rx_bytes = si->rx_bytes;
	} else {
		e->conn.rx_bytes = BPF_CORE_READ(tp, bytes_received);
		e->conn.tx_bytes = BPF_CORE_READ(tp, bytes_acked);
	}
	e->conn.dur_ns = now - si->start_ns;
	bpf_ringbuf_submit(e, 0);
}

// accept_point moves tgid's open cold-start timeline on for a connection
// (key: its struct sock *) made at now: the first one (usually the engine's
// readiness poll), and the first after the ready mark, which is the
// cold-start request's; then it returns 1 (its first send is the response).
static __always_inline int accept_point(__u32 tgid, __u64 key, __u64 now)
{
	struct timeline *t = bpf_map_lookup_elem(&timelines, &tgid);

	if (!t)
		return 0;
	if (!t->first_accept_ns) {
		t->first_accept_ns = now;
		emit(tgid, EV_FIRST_ACCEPT, 0, now);
	}
	if (t->accept_ns || !bpf_map_lookup_elem(&ready, &tgid))
		return 0;
	t->accept_ns = now;
	t->accept_sk = key;
	emit_point(tgid, EV_ACCEPT, 0, now);
	return 1;
}

// A TCP connection to tracked or starting instance tgid reached ESTABLISHED.
static __always_inline void passive_open(const struct sock *sk, __u32 tgid, __u64 now)
{
	struct sk_info *si;

	if (is_tracked(tgid))
		conn_open(sk, tgid, DIR_INBOUND, classify(sk, DIR_INBOUND), now);
	if (!accept_point(tgid, (__u64)sk, now))
		return;
	si = bpf_sk_storage_get(&sk_infos, (void *)sk, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!si) {
		count_lost();
		return;
	}
	si->flags |= SK_COLD;
}

// A connection to a Unix listener: lsk's sk_data_ready, in the connecting
// process's context, just after unix_stream_connect queued the new
// connection's skb, whose owner is the listener's end of the connection
// (the socket accept will return). The listener's owner is its
// sk_peer_pid, which unix_listen sets to the listening process. The new
// socket is reached through the queue, so the verifier holds it untrusted:
// its storage is created at its first data (unix_adopt), from the pending
// entry left here. A connect racing in between may make this read its
// connection instead: the other one is then not followed.
static __always_inline void unix_connect(const struct sock *lsk)
{
	struct unix_pending pd = {}, *old;
	struct sk_buff *skb;
	struct event *e;
	__u32 tgid, cur;
	__u64 key;

	tgid = BPF_CORE_READ(lsk, sk_peer_pid, numbers[0].nr);
	if (!tgid)
		return;
	pd.conn = is_tracked(tgid);
	if (!pd.conn && !bpf_map_lookup_elem(&timelines, &tgid))
		return;
	skb = BPF_CORE_READ(lsk, sk_receive_queue.prev);
	if (!skb || (void *)skb == (void *)&lsk->sk_receive_queue)
		return;
	key = (__u64)BPF_CORE_READ(skb, sk);
	if (!key)
		return;
	pd.start_ns = bpf_ktime_get_ns();
	old = bpf_map_lookup_elem(&unix_pending, &key);
	// Seen already, unless the entry is a dead connection's whose socket's
	// address was reused.
	if (old && pd.start_ns - old->start_ns < UNIX_PENDING_NS)
		return;
	cur = bpf_get_current_pid_tgid() >> 32;
	pd.tgid = tgid;
	pd.class = parent_tgid != 0 && cur == parent_tgid ? PEER_ROUTER : PEER_LOOPBACK;
	if (pd.conn) {
		e = reserve(tgid, EV_CONN_OPEN, 0, pd.start_ns);
		if (e) {
			e->conn.family = AF_UNIX;
			e->conn.direction = DIR_INBOUND;
			e->conn.peer_class = pd.class;
			bpf_ringbuf_submit(e, 0);
		}
	}
	pd.cold = accept_point(tgid, key, pd.start_ns);
	if (bpf_map_update_elem(&unix_pending, &key, &pd, BPF_ANY))
		count_lost();
	else if (!old)
		__sync_fetch_and_add(&unix_pending_n, 1);
}

// unix_adopt gives Unix socket sk, at its first data, the storage its
// connect left pending; NULL when it is no connection being followed.
static __always_inline struct sk_info *unix_adopt(const struct sock *sk)
{
	__u64 key = (__u64)sk;
	struct unix_pending *pd = bpf_map_lookup_elem(&unix_pending, &key);
	struct sk_info *si;

	if (!pd)
		return NULL;
	si = bpf_sk_storage_get(&sk_infos, (void *)sk, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (si) {
		si->flags = (pd->conn ? SK_CONN : 0) | (pd->cold ? SK_COLD : 0);
		si->tgid = pd->tgid;
		si->direction = DIR_INBOUND;
		si->peer_class = pd->class;
		si->start_ns = pd->start_ns;
		si->rx_bytes = 0;
		si->ready_ns = 0;
	} else {
		count_lost();
	}
	if (bpf_map_delete_elem(&unix_pending, &key) == 0)
		__sync_fetch_and_add(&unix_pending_n, -1);
	return si;
}

// A read on a socket. For a Unix connection of a tracked instance it is the
// socket-queue delay's end, and a read of 0 bytes after the peer shut down
// is the connection's close (a Unix socket fires no state change). Runs for
// every read of every socket family on the machine (empty ones too: that
// is how Go finds the queue drained), and returns after a load or two for
// all but those connections: user space attaches it once it sees a tracked
// instance's Unix connection.
SEC("tp_btf/sock_recv_length")
int BPF_PROG(on_sock_read, struct sock *sk, int ret, int flags)
{
	struct task_info *ti;
	struct sk_info *si;
	__u64 now;

	// A socket with no storage at all (the router's end) is none of ours:
	// one load, no helper call.
	if (ret < 0 || sk->__sk_common.skc_family != AF_UNIX || (flags & MSG_PEEK) || !sk->sk_bpf_storage)
		return 0;
	si = bpf_sk_storage_get(&sk_infos, sk, 0, 0);
	if (!si || !(si->flags & SK_CONN))
		return 0;
	now = bpf_ktime_get_ns();
	if (ret == 0) {
		if (sk->sk_shutdown & RCV_SHUTDOWN)
			conn_close(sk, si, now);
		return 0;
	}
	si->rx_bytes += ret;
	if (!socket_queue || !si->ready_ns)
		return 0;
	ti = info(bpf_get_current_task_btf());
	if (now >= si->ready_ns && ti && (ti->flags & TI_TRACKED))
		record(ti->slot, HIST_SOCKQ, now - si->ready_ns);
	si->ready_ns = 0;
	return 0;
}

// Connection state changes: one event per transition of a TCP socket, not
// per syscall. Listening, passive and active opens, and closes.
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_sock_state, const struct sock *sk, const int oldstate, const int newstate)
{
	__u32 port, tgid, *owner, rkey;
	struct sk_info *si;
	__u64 now;

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
			si = bpf_sk_storage_get(&sk_infos, (void *)sk, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
			if (si)
				si->flags |= SK_ROUTER;
			return 0;
		}
		if (is_tracked(tgid))
			conn_open(sk, tgid, DIR_OUTBOUND, classify(sk, DIR_OUTBOUND), bpf_ktime_get_ns());
		return 0;
	case TCP_ESTABLISHED:
		if (oldstate == TCP_SYN_SENT) {
			// Softirq: the router's connection now has its local port.
			si = bpf_sk_storage_get(&sk_infos, (void *)sk, 0, 0);
			if (si && (si->flags & SK_ROUTER)) {
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
		passive_open(sk, *owner, bpf_ktime_get_ns());
		return 0;
	case TCP_CLOSE:
		break;
	default:
		return 0;
	}
	si = bpf_sk_storage_get(&sk_infos, (void *)sk, 0, 0);
	if (si) {
		if (si->flags & SK_CONN)
			conn_close(sk, si, bpf_ktime_get_ns());
		if (si->flags & SK_ROUTER) {
			rkey = port;
			bpf_map_delete_elem(&router_ports, &rkey);
		}
		si->flags = 0;
	}
	if (oldstate != TCP_LISTEN)
		return 0;
	tgid = bpf_get_current_pid_tgid() >> 32;
	owner = bpf_map_lookup_elem(&ports, &port);
	if (owner && *owner == tgid)
		bpf_map_delete_elem(&ports, &port);
	return 0;
}
