package bpf

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/prometheus/client_golang/prometheus"
)

const (
	// maxTracked is MAX_TRACKED in probes.bpf.c: instances measured at once.
	maxTracked = 256
	// DefaultReadInterval is how often the histograms are read when
	// Config.ReadInterval is zero (they are also read on every scrape).
	DefaultReadInterval = time.Second
)

// Ring buffer event kinds (enum event_kind in probes.bpf.c).
const (
	evExec        = 1
	evListen      = 3
	evFirstAccept = 4
	evAccept      = 5
	evFirstWrite  = 6
	evExit        = 7
	evPort        = 8
	evConnOpen    = 9
	evConnClose   = 10
	evReady       = 11
)

// eventSize is sizeof(struct event): a 24-byte header and a 48-byte payload.
const (
	eventHeaderSize = 24
	eventSize       = eventHeaderSize + anatSnapSize
)

// The programs on the system-call path. A syscall tracepoint sends every
// task's system calls through the kernel's slow path whatever the program
// does, so they are attached only while a tracked instance loads (to count
// its model-file reads), or always with SyscallLatency.
var syscallPrograms = []string{"on_sys_enter", "on_sys_exit"}

// socketQueuePrograms serve only the socket-queue delay on TCP: one runs
// per TCP read on the whole machine. Attached only with SocketQueue, and
// then only while a tracked instance has an open TCP connection (tcpOpen):
// over serve's framed socket, that is only the engine's readiness polls
// and scrapes, so the requests' TCP reads (the client's, the router's)
// run nothing here. on_data_ready (per packet delivered to any socket)
// stays attached either way: a Unix socket's connect fires nothing else;
// it skips the TCP timing while tcp_read_on is 0.
var socketQueuePrograms = []string{tcpReadProgram}

// tcpReadProgram ends a TCP connection's socket-queue delay.
const tcpReadProgram = "on_tcp_read"

// unixReadProgram ends a Unix connection's socket-queue delay, counts its
// bytes and sees its close. It runs for every read of every socket on the
// machine, so it is attached only once a tracked instance's Unix
// connection was seen (serve's framed transport), never where instances
// are reached over TCP alone (--instance-http, Knative pods). The reads of
// that first connection before user space attaches it are not seen.
const unixReadProgram = "on_sock_read"

// modelReadProgram is the one syscall program a cold start needs (to count
// its model-file reads); on_sys_enter only times syscalls.
const modelReadProgram = "on_sys_exit"

// wakeupProgram serves only the anatomy, and sched_wakeup is among the
// machine's busiest tracepoints: attached while a tracked instance's cold
// start is open.
const wakeupProgram = "on_wakeup"

// coldStartPrograms serve only a cold start's first response and run per
// send: attached while a tracked instance's cold start is open, until its
// response (at most maxColdStart).
var coldStartPrograms = []string{"on_send_length"}

// dynamicPrograms are attached and detached as cold starts come and go.
var dynamicPrograms = slices.Concat([]string{wakeupProgram, unixReadProgram, tcpReadProgram}, syscallPrograms, coldStartPrograms)

// maxColdStart is how long a cold start may stay open before the syscall
// programs stop waiting for it (an instance that never became ready).
const maxColdStart = 2 * time.Minute

// readyGrace is how long on_wakeup stays attached for an instance after its
// ready mark. The held request normally reaches it within milliseconds; an
// idle minimum-scale instance may wait seconds for its first request, and
// its last phases are then accounted without wakeups (waiting for a CPU
// shows as blocked) rather than keeping a busy tracepoint attached.
const readyGrace = time.Second

// Config configures the probes.
type Config struct {
	// ParentPID is the process whose children get a cold-start timeline
	// from their exec on (the `pilotlight serve` process). 0: only
	// tracked processes get one, from the moment they are tracked.
	ParentPID int
	// ExecComm names a command (its first 15 bytes, as the kernel keeps
	// it) whose exec anywhere on the machine gets a timeline from exec on,
	// as ParentPID's children do; OnExec hears of each. The node agent
	// sets the runtime's name: runc, not a parent the agent knows, starts
	// it in a pod. Empty: none.
	ExecComm string
	// OnExec is called, outside the probes' lock, with each pid whose exec
	// opened a timeline (ParentPID's children and ExecComm's). The caller
	// Tracks the pid to follow its cold start, or Untracks it to drop it.
	OnExec func(pid int)
	// Registerer receives the pilotlight_bpf_* metrics; nil: none.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// ReadInterval is how often the kernel histograms are folded into the
	// exported ones; 0: DefaultReadInterval.
	ReadInterval time.Duration
	// SyscallLatency also measures time inside network syscalls
	// (pilotlight_bpf_network_syscall_seconds). It keeps the syscall
	// tracepoints attached, which puts every task's system calls on the
	// kernel's tracing path: README.md gives the measured cost.
	SyscallLatency bool
	// SocketQueue also measures how long request bytes wait in tracked
	// instances' socket receive queues
	// (pilotlight_bpf_socket_receive_queue_seconds). Its two programs run
	// for every packet delivered to a socket and every TCP read on the
	// machine, four of each per request through the router: README.md
	// gives the measured cost. serve and the agent turn it on unless told
	// not to (--ebpf-socket-queue=false, --socket-queue=false).
	SocketQueue bool
	// ReadyPriority and RequestPriority, when set, are the socket
	// priorities (SO_PRIORITY) a runtime in a Knative pod gives the
	// connection of its first answer saying it is ready and of its first
	// request (listener.ReadyPriority, RequestPriority; runtime/server does
	// it when K_SERVICE is set). The node agent sets them: a pod's ready is
	// then the kernel's send of that answer, and its first response the
	// send on the tagged request's connection, whatever probe connections
	// come between. 0: off (the engine's marks say ready instead).
	ReadyPriority, RequestPriority uint32
	// Programs, when not nil, attaches only the named programs (a
	// measurement aid: `pilotlight bench ebpf-programs` loads the probes
	// with each program alone to find what each costs). An empty non-nil
	// list loads the maps and the reader and attaches nothing.
	Programs []string
}

// Probes is the loaded and attached set of BPF programs. Its methods are
// safe for concurrent use, and do nothing after Close.
type Probes struct {
	log   *slog.Logger
	reg   prometheus.Registerer
	coll  *ebpf.Collection
	links []link.Link
	rd    *ringbuf.Reader

	tracked, hists, timelines, anatomies, ready, ports, lost *ebpf.Map

	// userGen is user_gen in the kernel: bumped after tracked or
	// anatomies change, so the programs' per-task caches are refreshed.
	userGen    *ebpf.Variable
	userGenVal uint32

	syscallLatency bool
	socketQueue    bool
	only           map[string]bool // Config.Programs; nil: every program
	marked         bool            // an engine marks cold starts (ParentPID set)
	execComm       bool            // Config.ExecComm set: a timeline also gets the container's start
	tagged         bool            // Config.RequestPriority set: the runtime tags its ready answer and first request
	onExec         func(pid int)
	dynLinks       map[string]link.Link // attached dynamicPrograms
	paused         bool                 // Pause detached everything
	unixSeen       bool                 // a tracked instance's Unix connection was seen: on_sock_read is wanted
	tcpOpen        int                  // tracked instances' TCP connections open (opened minus closed): on_tcp_read is wanted while > 0
	tcpReadOn      *ebpf.Variable       // tcp_read_on in the kernel: tcpReadGen while on_tcp_read is attached, 0 while not
	tcpReadGen     uint32               // the latest attach's generation (probes.bpf.c: tcp_read_on)
	coldOpen       map[uint32]time.Time // tracked pids loading (until ready), since
	anatOpen       map[uint32]time.Time // tracked pids whose cold start wants wakeups (until the response or readyGrace), until
	tlOpen         map[uint32]time.Time // tracked pids whose cold start is open (until the response), until

	coldStart      *prometheus.HistogramVec
	coldStartTime  *prometheus.HistogramVec
	coldMajFaults  *prometheus.CounterVec
	coldModelBytes *prometheus.CounterVec
	connections    *prometheus.CounterVec
	connBytes      *prometheus.HistogramVec
	unexpectedConn *prometheus.CounterVec
	collector      *collector

	stop chan struct{}
	wg   sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	clock     monoClock
	instances map[uint32]*instance      // tracked pids
	freeSlots []uint32                  // hists slots not in use
	totals    map[labels]*slotHists     // accumulated per function/revision, never reset
	states    map[uint32]*timelineState // open cold-start timelines
	done      map[uint32]bool           // pids whose timeline completed (not reopened by Track)
	portsOf   map[uint32]map[uint32]bool
	latest    map[string]Timeline
	lastConns map[string][]UnexpectedConnection // newest last, at most maxUnexpected
	userLost  uint64                            // events user space could not decode
}

type labels struct{ function, revision string }

// instance is one tracked pid.
type instance struct {
	labels
	slot uint32
	seen slotHists // the slot's counters when last folded into totals
}

// New loads the programs, attaches them and starts reading. Errors from
// loading are *LoadError, whose message is one sentence saying what is
// missing; pass it to Disabled's caller's log and expose Disabled.
func New(cfg Config) (*Probes, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.ReadInterval <= 0 {
		cfg.ReadInterval = DefaultReadInterval
	}
	if cfg.ParentPID < 0 {
		return nil, fmt.Errorf("bpf config: ParentPID %d is negative", cfg.ParentPID)
	}
	p := &Probes{
		log:       log,
		reg:       cfg.Registerer,
		stop:      make(chan struct{}),
		instances: map[uint32]*instance{},
		totals:    map[labels]*slotHists{},
		states:    map[uint32]*timelineState{},
		done:      map[uint32]bool{},
		portsOf:   map[uint32]map[uint32]bool{},
		latest:    map[string]Timeline{},
		lastConns: map[string][]UnexpectedConnection{},
		coldOpen:  map[uint32]time.Time{},
		anatOpen:  map[uint32]time.Time{},
		tlOpen:    map[uint32]time.Time{},
		dynLinks:  map[string]link.Link{},

		syscallLatency: cfg.SyscallLatency,
		socketQueue:    cfg.SocketQueue,
		marked:         cfg.ParentPID != 0,
		execComm:       cfg.ExecComm != "",
		tagged:         cfg.RequestPriority != 0,
		onExec:         cfg.OnExec,
	}
	ok := false
	defer func() {
		if !ok {
			p.release()
		}
	}()
	if cfg.Programs != nil {
		p.only = map[string]bool{}
		for _, name := range cfg.Programs {
			p.only[name] = true
		}
	}
	if len(cfg.ExecComm) > 15 {
		return nil, fmt.Errorf("bpf config: ExecComm %q is longer than the kernel's 15-byte command name", cfg.ExecComm)
	}
	if (cfg.ReadyPriority == 0) != (cfg.RequestPriority == 0) || (cfg.ReadyPriority != 0 && cfg.ReadyPriority == cfg.RequestPriority) {
		return nil, fmt.Errorf("bpf config: ReadyPriority %d and RequestPriority %d must both be set and differ, or both be 0", cfg.ReadyPriority, cfg.RequestPriority)
	}
	if err := p.load(uint32(cfg.ParentPID), cfg.ExecComm, cfg.SyscallLatency, cfg.SocketQueue, cfg.ReadyPriority, cfg.RequestPriority); err != nil {
		return nil, err
	}
	if err := p.clock.measure(); err != nil {
		return nil, fmt.Errorf("read clocks: %w", err)
	}
	for i := maxTracked - 1; i >= 0; i-- {
		p.freeSlots = append(p.freeSlots, uint32(i))
	}
	p.coldStart = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "pilotlight_bpf_cold_start_phase_seconds",
		Help:    "Phases of an instance's cold start, from kernel events (exec, listen, accept, first response write) and the engine's marks (request arrival, ready).",
		Buckets: prometheus.ExponentialBucketsRange(0.0001, 30, 22),
	}, []string{"function", "revision", "phase"})
	p.newMetrics()
	p.collector = newCollector(p)
	if p.reg != nil {
		if err := p.reg.Register(p.collector); err != nil {
			return nil, fmt.Errorf("register bpf metrics: %w", err)
		}
	}
	p.wg.Add(2)
	go p.readEvents()
	go p.tick(cfg.ReadInterval)
	ok = true
	log.Info("eBPF probes loaded", "programs", len(p.links)+len(p.dynLinks), "parent_pid", cfg.ParentPID,
		"syscall_latency", cfg.SyscallLatency, "socket_queue", cfg.SocketQueue)
	return p, nil
}

// load checks the prerequisites, loads the collection and attaches the
// programs (the syscall ones only with syscallLatency).
func (p *Probes) load(parent uint32, execComm string, syscallLatency, socketQueue bool, readyPrio, requestPrio uint32) error {
	spec, err := loadProbes()
	if err != nil {
		return &LoadError{Reason: "eBPF probes disabled: " + err.Error() + " (run on linux/amd64)", Err: err}
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return loadError("raising the memlock limit", err)
	}
	if _, err := btf.LoadKernelSpec(); err != nil {
		return &LoadError{Reason: reasonBTF, Err: err}
	}
	if err := spec.Variables["parent_tgid"].Set(parent); err != nil {
		return fmt.Errorf("set parent_tgid: %w", err)
	}
	var comm [16]byte
	copy(comm[:], execComm)
	if err := spec.Variables["exec_comm"].Set(comm); err != nil {
		return fmt.Errorf("set exec_comm: %w", err)
	}
	for name, v := range map[string]uint32{"ready_priority": readyPrio, "request_priority": requestPrio} {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	for name, on := range map[string]bool{"syscall_latency": syscallLatency, "socket_queue": socketQueue} {
		var v uint32
		if on {
			v = 1
		}
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return loadError("loading the programs", err)
	}
	p.coll = coll
	for name := range p.only {
		if coll.Programs[name] == nil {
			return fmt.Errorf("bpf config: no program %q in the object", name)
		}
	}
	if p.userGen = coll.Variables["user_gen"]; p.userGen == nil {
		return errors.New("variable user_gen missing from the object")
	}
	if p.tcpReadOn = coll.Variables["tcp_read_on"]; p.tcpReadOn == nil {
		return errors.New("variable tcp_read_on missing from the object")
	}
	if err := p.userGen.Get(&p.userGenVal); err != nil {
		return loadError("reading user_gen (the kernel must support mmapable maps)", err)
	}
	for name, m := range map[string]**ebpf.Map{
		"tracked": &p.tracked, "hists": &p.hists, "timelines": &p.timelines, "anatomies": &p.anatomies,
		"ready": &p.ready, "ports": &p.ports, "lost": &p.lost,
	} {
		if *m = coll.Maps[name]; *m == nil {
			return fmt.Errorf("map %s missing from the object", name)
		}
	}
	if err := p.attachStatic(); err != nil {
		return err
	}
	if syscallLatency {
		if err := p.attach(syscallPrograms...); err != nil {
			return err
		}
	}
	rd, err := ringbuf.NewReader(coll.Maps["events"])
	if err != nil {
		return loadError("opening the event ring buffer", err)
	}
	p.rd = rd
	return nil
}

// Close detaches every program, closes every map and unregisters the
// metrics. It is safe to call more than once.
func (p *Probes) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	close(p.stop)
	if p.rd != nil {
		p.rd.Close() // ends readEvents
	}
	p.wg.Wait()
	if p.reg != nil {
		p.reg.Unregister(p.collector)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.release()
	return nil
}
