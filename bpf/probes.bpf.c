//go:build ignore

// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
//
// Pilotlight's kernel probes: the cold-start timeline of every runtime
// instance the engine starts, and per-request kernel latency (run-queue
// delay, socket receive-queue delay, time inside network syscalls) of the
// instances user space tracks. Every program is tp_btf (BTF-typed raw
// tracepoints): no tracefs mount, no kprobes, no fentry.
//
// Syscall numbers and pt_regs are x86-64's: built with bpf2go -target amd64.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#ifndef __TARGET_ARCH_x86
#error "probes.bpf.c reads x86-64 syscall numbers and pt_regs; build with bpf2go -target amd64"
#endif

// Sizes. Keep in sync with probes.go (maxTracked, histBuckets).
#define MAX_TRACKED 256    // instances measured at once (per-request histograms)
#define MAX_TIMELINES 1024 // children of the serve process whose cold start is open
#define MAX_THREADS 16384  // threads with a pending wakeup or syscall
#define MAX_SOCKETS 16384  // sockets of tracked ports with unread data
#define MAX_PORTS 1024     // listening ports of tracked instances
#define HIST_BUCKETS 40    // log2(ns) buckets: [2^i, 2^(i+1)) ns, last one open
#define RINGBUF_BYTES (256 * 1024)

#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define MSG_PEEK 2
#define TASK_RUNNING 0

// x86-64 syscall numbers.
#define NR_read 0
#define NR_write 1
#define NR_readv 19
#define NR_writev 20
#define NR_connect 42
#define NR_accept 43
#define NR_sendto 44
#define NR_recvfrom 45
#define NR_sendmsg 46
#define NR_recvmsg 47
#define NR_bind 49
#define NR_listen 50
#define NR_accept4 288
#define NR_recvmmsg 299
#define NR_sendmmsg 307

enum hist_kind {
	HIST_RUNQ = 0,    // wakeup -> on CPU
	HIST_SOCKQ = 1,   // data ready on the socket -> read returns it
	HIST_SYSCALL = 2, // network syscall enter -> exit
	HIST_KINDS = 3,
};

enum event_kind {
	EV_EXEC = 1,         // arg: parent tgid
	EV_BIND = 2,         // arg: fd
	EV_LISTEN = 3,       // arg: fd
	EV_FIRST_ACCEPT = 4, // arg: accepted fd (usually the engine's readiness poll)
	EV_ACCEPT = 5,       // first accept after user space marked the instance ready; arg: fd
	EV_FIRST_WRITE = 6,  // first write on that accepted fd; arg: bytes
	EV_EXIT = 7,         // the whole thread group exited
	EV_PORT = 8,         // a tracked or starting instance listens on TCP port arg
};

struct hist {
	__u64 count;
	__u64 sum_ns;
	__u64 buckets[HIST_BUCKETS];
};

struct hists {
	struct hist h[HIST_KINDS];
};

struct event {
	__u64 ts_ns; // bpf_ktime_get_ns (CLOCK_MONOTONIC)
	__u32 tgid;
	__u32 kind;
	__s64 arg;
};

struct timeline {
	__u64 exec_ns;
	__u64 bind_ns;
	__u64 listen_ns;
	__u64 first_accept_ns;
	__u64 accept_ns;
	__s64 accept_fd;
};

struct sys_start {
	__u64 ts_ns;
	__u64 nr;
};

// Set by the loader: the tgid whose children get a timeline from exec on.
const volatile __u32 parent_tgid = 0;

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

// tid -> network syscall entry.
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

// TCP port -> tgid listening on it. sk_data_ready runs in softirq context,
// where current is anybody: the local port says whose socket it is.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PORTS);
	__type(key, __u32);
	__type(value, __u32);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, RINGBUF_BYTES);
} events SEC(".maps");

// [0]: events dropped (ring buffer full or timeline map full).
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

static __always_inline void emit(__u32 tgid, __u32 kind, __s64 arg, __u64 ts)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count_lost();
		return;
	}
	e->ts_ns = ts;
	e->tgid = tgid;
	e->kind = kind;
	e->arg = arg;
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

static __always_inline int write_syscall(long nr)
{
	return nr == NR_write || nr == NR_writev || nr == NR_sendto || nr == NR_sendmsg ||
	       nr == NR_sendmmsg;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 tgid = p->tgid;
	__u32 ptgid = p->real_parent->tgid;
	struct timeline t = {};

	if (!(parent_tgid != 0 && ptgid == parent_tgid) && !is_tracked(tgid))
		return 0;
	t.exec_ns = bpf_ktime_get_ns();
	t.accept_fd = -1;
	// A fresh entry: a reused pid starts over.
	if (bpf_map_update_elem(&timelines, &tgid, &t, BPF_ANY))
		count_lost();
	bpf_map_delete_elem(&ready, &tgid);
	emit(tgid, EV_EXEC, ptgid, t.exec_ns);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *p, bool group_dead)
{
	__u32 tid = p->pid;
	__u32 tgid = p->tgid;
	int known;

	bpf_map_delete_elem(&wakeups, &tid);
	bpf_map_delete_elem(&syscalls, &tid);
	if (!group_dead)
		return 0;
	known = bpf_map_delete_elem(&tracked, &tgid) == 0;
	known |= bpf_map_delete_elem(&timelines, &tgid) == 0;
	bpf_map_delete_elem(&ready, &tgid);
	if (known)
		emit(tgid, EV_EXIT, 0, bpf_ktime_get_ns());
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(on_sys_enter, struct pt_regs *regs, long id)
{
	__u64 pid_tgid;
	__u32 tid;
	struct sys_start s;

	if (!timed_syscall(id))
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

static __always_inline void timeline_step(struct timeline *t, __u32 tgid, long nr, long ret,
					  __s64 fd, __u64 now)
{
	switch (nr) {
	case NR_bind:
		if (ret == 0 && !t->bind_ns) {
			t->bind_ns = now;
			emit(tgid, EV_BIND, fd, now);
		}
		return;
	case NR_listen:
		if (ret == 0 && !t->listen_ns) {
			t->listen_ns = now;
			emit(tgid, EV_LISTEN, fd, now);
		}
		return;
	case NR_accept:
	case NR_accept4:
		if (ret < 0)
			return;
		if (!t->first_accept_ns) {
			t->first_accept_ns = now;
			emit(tgid, EV_FIRST_ACCEPT, ret, now);
		}
		if (!t->accept_ns && bpf_map_lookup_elem(&ready, &tgid)) {
			t->accept_ns = now;
			t->accept_fd = ret;
			emit(tgid, EV_ACCEPT, ret, now);
		}
		return;
	}
	if (write_syscall(nr) && ret > 0 && t->accept_ns && fd == t->accept_fd) {
		emit(tgid, EV_FIRST_WRITE, ret, now);
		// The timeline is complete: stop looking at this process.
		bpf_map_delete_elem(&timelines, &tgid);
		bpf_map_delete_elem(&ready, &tgid);
	}
}

SEC("tp_btf/sys_exit")
int BPF_PROG(on_sys_exit, struct pt_regs *regs, long ret)
{
	long nr = regs->orig_ax;
	__u64 pid_tgid, now;
	__u32 tid, tgid, port;
	__s64 fd;
	struct sys_start *s;
	struct timeline *t;

	if (!timed_syscall(nr) && nr != NR_bind && nr != NR_listen)
		return 0;
	pid_tgid = bpf_get_current_pid_tgid();
	tid = (__u32)pid_tgid;
	tgid = pid_tgid >> 32;
	now = bpf_ktime_get_ns();
	fd = (int)regs->di;

	s = bpf_map_lookup_elem(&syscalls, &tid);
	if (s) {
		if (s->nr == nr && now >= s->ts_ns)
			record(tgid, HIST_SYSCALL, now - s->ts_ns);
		bpf_map_delete_elem(&syscalls, &tid);
	}

	t = bpf_map_lookup_elem(&timelines, &tgid);
	if (nr == NR_listen && ret == 0 && (t || is_tracked(tgid))) {
		port = fd_tcp_port(fd);
		if (port) {
			if (bpf_map_update_elem(&ports, &port, &tgid, BPF_ANY))
				count_lost();
			emit(tgid, EV_PORT, port, now);
		}
	}
	if (t)
		timeline_step(t, tgid, nr, ret, fd, now);
	return 0;
}

static __always_inline void mark_wakeup(struct task_struct *p)
{
	__u32 tid = p->pid;
	__u64 now;

	if (!is_tracked(p->tgid))
		return;
	now = bpf_ktime_get_ns();
	bpf_map_update_elem(&wakeups, &tid, &now, BPF_ANY);
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(on_wakeup, struct task_struct *p)
{
	mark_wakeup(p);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(on_wakeup_new, struct task_struct *p)
{
	mark_wakeup(p);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(on_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	__u32 tid = next->pid;
	__u64 *ts, now;

	// Preempted while runnable: it waits in the run queue from now.
	if (prev_state == TASK_RUNNING)
		mark_wakeup(prev);
	if (tid == 0)
		return 0;
	ts = bpf_map_lookup_elem(&wakeups, &tid);
	if (!ts)
		return 0;
	now = bpf_ktime_get_ns();
	if (now >= *ts)
		record(next->tgid, HIST_RUNQ, now - *ts);
	bpf_map_delete_elem(&wakeups, &tid);
	return 0;
}

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

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_sock_state, const struct sock *sk, const int oldstate, const int newstate)
{
	__u64 key = (__u64)sk;
	__u32 port, tgid, *owner;

	if (newstate != TCP_CLOSE)
		return 0;
	// A closed socket's address may be reused by the next one.
	bpf_map_delete_elem(&sk_ready, &key);
	if (oldstate != TCP_LISTEN)
		return 0;
	port = sk->__sk_common.skc_num;
	tgid = bpf_get_current_pid_tgid() >> 32;
	owner = bpf_map_lookup_elem(&ports, &port);
	if (owner && *owner == tgid)
		bpf_map_delete_elem(&ports, &port);
	return 0;
}
