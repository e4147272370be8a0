package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
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

// socketQueuePrograms time request bytes in the socket receive queue: one
// runs per packet delivered to any socket, the other per TCP read, on the
// whole machine. Attached only with SocketQueue.
var socketQueuePrograms = []string{"on_data_ready", "on_tcp_read"}

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
var dynamicPrograms = slices.Concat([]string{wakeupProgram}, syscallPrograms, coldStartPrograms)

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
	only           map[string]bool      // Config.Programs; nil: every program
	marked         bool                 // an engine marks cold starts (ParentPID set)
	dynLinks       map[string]link.Link // attached dynamicPrograms
	paused         bool                 // Pause detached everything
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
	if err := p.load(uint32(cfg.ParentPID), cfg.SyscallLatency); err != nil {
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
func (p *Probes) load(parent uint32, syscallLatency bool) error {
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
	var latency uint32
	if syscallLatency {
		latency = 1
	}
	if err := spec.Variables["syscall_latency"].Set(latency); err != nil {
		return fmt.Errorf("set syscall_latency: %w", err)
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

// attachStatic attaches the programs that stay attached (not the dynamic ones).
func (p *Probes) attachStatic() error {
	for name, prog := range p.coll.Programs {
		if slices.Contains(dynamicPrograms, name) || !p.wanted(name) ||
			(!p.socketQueue && slices.Contains(socketQueuePrograms, name)) {
			continue
		}
		l, err := link.AttachTracing(link.TracingOptions{Program: prog, AttachType: ebpf.AttachTraceRawTp})
		if err != nil {
			return loadError("attaching "+name+" (tp_btf)", err)
		}
		p.links = append(p.links, l)
	}
	return nil
}

// Pause detaches every program, keeping every map and the reader; Resume
// attaches them again. For measuring what the programs cost: `bench ebpf`
// alternates them in windows of one continuous load. Events while paused
// are missed (connections opened meanwhile are not followed), and a cold
// start opened meanwhile gets its programs only at Resume.
func (p *Probes) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paused {
		return
	}
	p.paused = true
	for _, l := range p.links {
		l.Close()
	}
	p.links = nil
	p.detach(dynamicPrograms...)
}

// Resume attaches again what Pause detached.
func (p *Probes) Resume() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("resume: probes closed")
	}
	if !p.paused {
		return nil
	}
	p.paused = false
	if err := p.attachStatic(); err != nil {
		return err
	}
	// The dynamic programs the open cold starts and the options need.
	var dyn []string
	if p.syscallLatency {
		dyn = append(dyn, syscallPrograms...)
	}
	if len(p.coldOpen) > 0 {
		dyn = append(dyn, modelReadProgram)
	}
	if len(p.anatOpen) > 0 {
		dyn = append(dyn, wakeupProgram)
	}
	if len(p.tlOpen) > 0 {
		dyn = append(dyn, coldStartPrograms...)
	}
	if err := p.attach(dyn...); err != nil {
		return err
	}
	p.syncLinks()
	return nil
}

// bumpGen tells the programs that tracked or anatomies changed. Callers hold p.mu.
func (p *Probes) bumpGen() {
	p.userGenVal++
	if err := p.userGen.Set(p.userGenVal); err != nil {
		p.log.Debug("bpf: bump user_gen", "err", err)
	}
}

// release closes the ring buffer reader, every link and the collection.
func (p *Probes) release() {
	if p.rd != nil {
		p.rd.Close()
	}
	for _, l := range p.links {
		l.Close()
	}
	p.links = nil
	p.detach(dynamicPrograms...)
	if p.coll != nil {
		p.coll.Close()
	}
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

// Track starts measuring pid's requests under function and revision. A pid
// already tracked under other labels is re-labelled: its counts so far
// stay with the old labels.
func (p *Probes) Track(pid int, function, revision string) error {
	if pid <= 0 || function == "" {
		return fmt.Errorf("track pid %d: need a positive pid and a function name (got function %q)", pid, function)
	}
	key := uint32(pid)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("track: probes closed")
	}
	if in := p.instances[key]; in != nil {
		if in.function == function && in.revision == revision {
			return nil
		}
		p.retire(key, in)
	}
	if len(p.freeSlots) == 0 {
		return fmt.Errorf("track pid %d: %d instances are tracked already, the most the probes hold", pid, maxTracked)
	}
	slot := p.freeSlots[len(p.freeSlots)-1]
	in := &instance{labels: labels{function, revision}, slot: slot}
	if err := p.readSlot(slot, &in.seen); err != nil {
		return fmt.Errorf("track pid %d: read histogram slot %d: %w", pid, slot, err)
	}
	if err := p.tracked.Update(key, slot, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("track pid %d: %w", pid, err)
	}
	p.freeSlots = p.freeSlots[:len(p.freeSlots)-1]
	p.instances[key] = in
	defer p.bumpGen()
	if _, ok := p.totals[in.labels]; !ok {
		p.totals[in.labels] = &slotHists{}
	}

	st := p.state(key)
	st.function, st.revision = function, revision
	// A cold start is followed where an engine marks it (serve, with a
	// ParentPID). The node agent tracks running pods and gives no marks:
	// opening one would keep the cold-start programs attached for nothing.
	if p.marked {
		p.openTimeline(key)
		p.openColdStart(key)
	}

	ports, err := listeningPorts(pid)
	if err != nil {
		p.log.Debug("bpf: listening ports", "pid", pid, "err", err)
	}
	for _, port := range ports {
		p.addPort(key, port)
	}
	return nil
}

// Untrack stops measuring pid and forgets its open timeline; its counts
// stay in the exported histograms. Unknown pids are ignored.
func (p *Probes) Untrack(pid int) {
	key := uint32(pid)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	if in := p.instances[key]; in != nil {
		p.retire(key, in)
	}
	p.forget(key)
}

// Mark records a point of pid's cold start that only user space knows:
// MarkRequestArrival, MarkReady, MarkSpecialiseStart. MarkReady also arms
// the kernel side: the next accept is the cold-start request's.
func (p *Probes) Mark(pid int, phase string, t time.Time) {
	if pid <= 0 || phase == "" {
		return
	}
	key := uint32(pid)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.done[key] {
		return
	}
	// Marks are for instances the engine tracks (or whose exec was seen):
	// a stray pid must not leave state nobody cleans up.
	if p.instances[key] == nil && p.states[key] == nil {
		return
	}
	st := p.state(key)
	st.points[phase] = t.Round(0)
	if phase == MarkRequestArrival {
		return
	}
	// The other marks start or end an anatomy phase: take the kernel's
	// counters as of the mark.
	p.openTimeline(key)
	var a anatomyEntry
	if err := p.anatomies.Lookup(key, &a); err == nil {
		st.snaps[phase] = a.at(p.clock.mono(t))
	}
	if phase != MarkReady {
		return
	}
	if err := p.ready.Update(key, uint64(1), ebpf.UpdateAny); err != nil {
		p.log.Debug("bpf: arm ready", "pid", pid, "err", err)
	}
	// Ready means the model is loaded: its reads are counted. The first
	// request may come much later (an idle minimum-scale instance), and
	// the syscall tracepoints cost every task meanwhile.
	p.loaded(key)
}

// LatestConnections returns the last unexpected connections (newest last)
// of each revision, keyed "function/revision".
func (p *Probes) LatestConnections() map[string][]UnexpectedConnection {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string][]UnexpectedConnection, len(p.lastConns))
	for k, v := range p.lastConns {
		out[k] = slices.Clone(v)
	}
	return out
}

// LatestTimelines returns the latest complete cold-start timeline of each
// revision, keyed "function/revision".
func (p *Probes) LatestTimelines() map[string]Timeline {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]Timeline, len(p.latest))
	for k, v := range p.latest {
		out[k] = v
	}
	return out
}

// state returns pid's open timeline, creating it.
func (p *Probes) state(pid uint32) *timelineState {
	st := p.states[pid]
	if st == nil {
		st = newTimelineState(pid)
		if in := p.instances[pid]; in != nil {
			st.function, st.revision = in.function, in.revision
		}
		p.states[pid] = st
	}
	return st
}

// openTimeline makes sure the kernel follows pid's listen/accept/write and
// its anatomy even when its exec was not seen (not a child of ParentPID).
func (p *Probes) openTimeline(pid uint32) {
	if p.done[pid] {
		return
	}
	err := p.timelines.Update(pid, [3]uint64{}, ebpf.UpdateNoExist)
	if err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
		p.log.Debug("bpf: open timeline", "pid", pid, "err", err)
	}
	// Its threads' states are unknown until each next switches: counted
	// blocked until then.
	a := anatomyEntry{LastNS: p.clock.mono(time.Now())}
	err = p.anatomies.Update(pid, a, ebpf.UpdateNoExist)
	switch {
	case err == nil:
		p.bumpGen()
	case !errors.Is(err, ebpf.ErrKeyExist):
		p.log.Debug("bpf: open anatomy", "pid", pid, "err", err)
	}
}

// openColdStart attaches what tracked pid's cold start needs: on_sys_exit
// until it is ready (its model-file reads), on_wakeup until its response
// or readyGrace after ready, and on_send_length (its response) until its
// response.
func (p *Probes) openColdStart(pid uint32) {
	if p.done[pid] {
		return
	}
	now := time.Now()
	if _, ok := p.coldOpen[pid]; !ok {
		p.coldOpen[pid] = now
	}
	if _, ok := p.anatOpen[pid]; !ok {
		p.anatOpen[pid] = now.Add(maxColdStart)
	}
	if _, ok := p.tlOpen[pid]; !ok {
		p.tlOpen[pid] = now.Add(maxColdStart)
	}
	if err := p.attach(slices.Concat([]string{wakeupProgram, modelReadProgram}, coldStartPrograms)...); err != nil {
		p.log.Warn("bpf: attach the cold-start programs; this cold start's anatomy and model-file bytes are incomplete", "pid", pid, "err", err)
	}
}

// loaded ends pid's loading: the syscall programs detach once no tracked
// instance is loading, and on_wakeup readyGrace later unless the response
// came first.
func (p *Probes) loaded(pid uint32) {
	delete(p.coldOpen, pid)
	if until, ok := p.anatOpen[pid]; ok {
		if end := time.Now().Add(readyGrace); end.Before(until) {
			p.anatOpen[pid] = end
		}
		time.AfterFunc(readyGrace+10*time.Millisecond, func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			if !p.closed {
				p.syncLinks()
			}
		})
	}
	p.syncLinks()
}

// closeColdStart ends pid's cold start: what it needed detaches once no
// other needs it.
func (p *Probes) closeColdStart(pid uint32) {
	delete(p.coldOpen, pid)
	delete(p.anatOpen, pid)
	delete(p.tlOpen, pid)
	p.syncLinks()
}

// syncLinks detaches the dynamic programs nothing needs any more; a cold
// start open for longer than maxColdStart no longer counts.
func (p *Probes) syncLinks() {
	now := time.Now()
	for pid, since := range p.coldOpen {
		if now.Sub(since) > maxColdStart {
			delete(p.coldOpen, pid)
		}
	}
	for _, open := range []map[uint32]time.Time{p.anatOpen, p.tlOpen} {
		for pid, until := range open {
			if now.After(until) {
				delete(open, pid)
			}
		}
	}
	if len(p.coldOpen) == 0 && !p.syscallLatency {
		p.detach(modelReadProgram)
	}
	if len(p.anatOpen) == 0 {
		p.detach(wakeupProgram)
	}
	if len(p.tlOpen) == 0 {
		p.detach(coldStartPrograms...)
	}
}

// attach attaches the named dynamic programs that are not attached.
func (p *Probes) attach(names ...string) error {
	for _, name := range names {
		if p.dynLinks[name] != nil || !p.wanted(name) || p.paused {
			continue
		}
		l, err := link.AttachTracing(link.TracingOptions{Program: p.coll.Programs[name], AttachType: ebpf.AttachTraceRawTp})
		if err != nil {
			return loadError("attaching "+name, err)
		}
		p.dynLinks[name] = l
	}
	return nil
}

// wanted says whether Config.Programs lets program name be attached.
func (p *Probes) wanted(name string) bool {
	return p.only == nil || p.only[name]
}

func (p *Probes) detach(names ...string) {
	for _, name := range names {
		if l := p.dynLinks[name]; l != nil {
			l.Close()
			delete(p.dynLinks, name)
		}
	}
}

// retire folds pid's last counts into its labels' totals and frees its slot.
func (p *Probes) retire(pid uint32, in *instance) {
	if err := p.tracked.Delete(pid); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		p.log.Debug("bpf: untrack", "pid", pid, "err", err)
	}
	p.bumpGen()
	p.fold(in)
	delete(p.instances, pid)
	p.freeSlots = append(p.freeSlots, in.slot)
}

// forget drops everything kept for pid other than the exported counts.
func (p *Probes) forget(pid uint32) {
	delete(p.states, pid)
	delete(p.done, pid)
	p.closeColdStart(pid)
	_ = p.ready.Delete(pid)
	_ = p.timelines.Delete(pid)
	if p.anatomies.Delete(pid) == nil {
		p.bumpGen()
	}
	for port := range p.portsOf[pid] {
		var owner uint32
		if p.ports.Lookup(port, &owner) == nil && owner == pid {
			_ = p.ports.Delete(port)
		}
	}
	delete(p.portsOf, pid)
}

func (p *Probes) addPort(pid, port uint32) {
	if err := p.ports.Update(port, pid, ebpf.UpdateAny); err != nil {
		p.log.Debug("bpf: add port", "pid", pid, "port", port, "err", err)
		return
	}
	if p.portsOf[pid] == nil {
		p.portsOf[pid] = map[uint32]bool{}
	}
	p.portsOf[pid][port] = true
}

// fold adds what in's slot counted since the last fold to its labels' totals.
func (p *Probes) fold(in *instance) {
	var cur slotHists
	if err := p.readSlot(in.slot, &cur); err != nil {
		p.log.Debug("bpf: read histograms", "slot", in.slot, "err", err)
		return
	}
	tot := p.totals[in.labels]
	for k := range cur {
		tot[k].addDelta(&cur[k], &in.seen[k])
	}
	in.seen = cur
}

// readSlot sums the CPUs' copies of a histogram slot into h.
func (p *Probes) readSlot(slot uint32, h *slotHists) error {
	var cpus []slotHists
	if err := p.hists.Lookup(slot, &cpus); err != nil {
		return err
	}
	*h = slotHists{}
	for i := range cpus {
		h.add(&cpus[i])
	}
	return nil
}

// readHistograms folds every tracked pid's counts. Callers hold p.mu.
func (p *Probes) readHistograms() {
	if p.closed {
		return
	}
	for _, in := range p.instances {
		p.fold(in)
	}
}

func (p *Probes) tick(every time.Duration) {
	defer p.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.mu.Lock()
			if err := p.clock.measure(); err != nil {
				p.log.Debug("bpf: read clocks", "err", err)
			}
			p.readHistograms()
			if len(p.coldOpen)+len(p.anatOpen)+len(p.tlOpen) > 0 {
				p.syncLinks()
			}
			p.mu.Unlock()
		}
	}
}

// readEvents applies ring buffer events until the reader is closed.
func (p *Probes) readEvents() {
	defer p.wg.Done()
	var rec ringbuf.Record
	for {
		if err := p.rd.ReadInto(&rec); err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			p.log.Debug("bpf: read ring buffer", "err", err)
			continue
		}
		p.mu.Lock()
		if len(rec.RawSample) < eventSize {
			p.userLost++
		} else {
			s := rec.RawSample
			p.apply(binary.LittleEndian.Uint64(s[0:]), binary.LittleEndian.Uint32(s[8:]),
				binary.LittleEndian.Uint32(s[12:]), int64(binary.LittleEndian.Uint64(s[16:])), s[eventHeaderSize:eventSize])
		}
		p.mu.Unlock()
	}
}

// apply folds one kernel event into the timelines and the connection
// counts. Callers hold p.mu.
func (p *Probes) apply(ts uint64, pid, kind uint32, arg int64, payload []byte) {
	if p.closed {
		return
	}
	at := p.clock.wall(ts)
	switch kind {
	case evExec:
		st := p.states[pid]
		if prev, ok := st.execTime(); ok && prev.Before(at) {
			// The same pid exec'd again: start over, keeping labels and
			// the marks given since.
			fresh := newTimelineState(pid)
			fresh.function, fresh.revision = st.function, st.revision
			for name, t := range st.points {
				if isMark(name) && !t.Before(at) {
					fresh.points[name] = t
					if snap, ok := st.snaps[name]; ok {
						fresh.snaps[name] = snap
					}
				}
			}
			p.states[pid] = fresh
		}
		delete(p.done, pid)
		p.state(pid).firstWith(EventExec, at, decodeAnatSnap(payload))
	case evListen:
		p.stateIfOpen(pid).firstWith(EventListen, at, decodeAnatSnap(payload))
	case evFirstAccept:
		p.stateIfOpen(pid).first(EventFirstAccept, at)
	case evAccept:
		p.stateIfOpen(pid).firstWith(EventAccept, at, decodeAnatSnap(payload))
	case evFirstWrite:
		st := p.stateIfOpen(pid)
		st.firstWith(EventFirstWrite, at, decodeAnatSnap(payload))
		p.complete(pid, st)
	case evConnOpen, evConnClose:
		c, ok := decodeConn(payload)
		if !ok {
			p.userLost++
			return
		}
		p.connection(at, pid, kind == evConnOpen, c)
	case evPort:
		p.addPort(pid, uint32(arg))
	case evExit:
		if in := p.instances[pid]; in != nil {
			p.retire(pid, in)
		}
		p.forget(pid)
	default:
		p.userLost++
	}
}

// stateIfOpen is pid's timeline, or a throwaway one when it completed already.
func (p *Probes) stateIfOpen(pid uint32) *timelineState {
	if p.done[pid] {
		return newTimelineState(pid)
	}
	return p.state(pid)
}

// complete publishes pid's timeline and observes its phases.
func (p *Probes) complete(pid uint32, st *timelineState) {
	if st.done || p.done[pid] {
		return
	}
	st.done = true
	p.done[pid] = true
	delete(p.states, pid)
	p.closeColdStart(pid)
	if st.function == "" {
		p.log.Debug("bpf: timeline of an untracked pid dropped", "pid", pid)
		return
	}
	tl := st.build()
	for _, d := range phaseDefs {
		if v, ok := tl.Phases[d.name]; ok {
			p.coldStart.WithLabelValues(st.function, st.revision, d.name).Observe(v / 1000)
		}
	}
	for _, ph := range tl.Anatomy {
		for _, state := range anatStates {
			p.coldStartTime.WithLabelValues(st.function, st.revision, ph.Phase, state).Observe(ph.StatesMS[state] / 1000)
		}
		p.coldMajFaults.WithLabelValues(st.function, st.revision, ph.Phase).Add(float64(ph.MajorFaults))
		p.coldModelBytes.WithLabelValues(st.function, st.revision, ph.Phase).Add(float64(ph.ModelBytes))
	}
	p.latest[st.function+"/"+st.revision] = tl
	p.log.Debug("bpf: cold start timeline", "function", st.function, "revision", st.revision, "pid", pid, "phases_ms", tl.Phases)
}

func (s *timelineState) execTime() (time.Time, bool) {
	if s == nil {
		return time.Time{}, false
	}
	t, ok := s.points[EventExec]
	return t, ok
}

// connection counts a tracked instance's connection opening or closing, and
// reports an unexpected one. Callers hold p.mu.
func (p *Probes) connection(at time.Time, pid uint32, open bool, c connEvent) {
	in := p.instances[pid]
	if in == nil {
		return // untracked meanwhile
	}
	if !open {
		p.connBytes.WithLabelValues(in.function, in.revision, c.direction, c.peerClass, "received").Observe(float64(c.rx))
		p.connBytes.WithLabelValues(in.function, in.revision, c.direction, c.peerClass, "sent").Observe(float64(c.tx))
		return
	}
	p.connections.WithLabelValues(in.function, in.revision, c.direction, c.peerClass).Inc()
	if !c.unexpected() {
		return
	}
	u := newUnexpected(at, pid, in.labels, c)
	p.unexpectedConn.WithLabelValues(in.function, in.revision).Inc()
	key := in.function + "/" + in.revision
	last := append(p.lastConns[key], u)
	if len(last) > maxUnexpected {
		last = slices.Delete(last, 0, len(last)-maxUnexpected)
	}
	p.lastConns[key] = last
	p.log.Warn("unexpected outbound connection from an instance", "function", in.function, "revision", in.revision,
		"pid", pid, "peer", u.Peer, "peer_class", c.peerClass)
}

func isMark(name string) bool {
	switch name {
	case EventExec, EventListen, EventFirstAccept, EventAccept, EventFirstWrite:
		return false
	}
	return true
}
