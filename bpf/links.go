package bpf

import (
	"errors"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

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
	if p.unixSeen {
		dyn = append(dyn, unixReadProgram)
	}
	if err := p.attach(dyn...); err != nil {
		return err
	}
	if p.tcpOpen > 0 {
		if err := p.attachTCPRead(); err != nil {
			return err
		}
	}
	p.syncLinks()
	return nil
}

// tcpConn counts a tracked instance's TCP connection opening or closing,
// and attaches on_tcp_read (with SocketQueue) while any is open. A close
// whose open was lost (ring buffer full) leaves it attached: the cost of
// before, nothing wrong. Callers hold p.mu.
func (p *Probes) tcpConn(open bool) {
	if !p.socketQueue {
		return
	}
	if open {
		p.tcpOpen++
		if p.tcpOpen == 1 {
			if err := p.attachTCPRead(); err != nil {
				p.log.Warn("bpf: TCP socket-queue delay will not be measured", "err", err)
			}
		}
		return
	}
	if p.tcpOpen > 0 {
		p.tcpOpen--
	}
	if p.tcpOpen == 0 {
		p.detachTCPRead()
	}
}

// attachTCPRead attaches on_tcp_read, then lets on_data_ready start TCP
// arrivals: an arrival is never left for a read nothing sees.
func (p *Probes) attachTCPRead() error {
	if err := p.attach(tcpReadProgram); err != nil {
		return err
	}
	if p.dynLinks[tcpReadProgram] != nil {
		p.tcpReadGen++
		if p.tcpReadGen == 0 { // 0 is off
			p.tcpReadGen = 1
		}
		return p.tcpReadOn.Set(p.tcpReadGen)
	}
	return nil
}

// detachTCPRead stops TCP arrivals, then detaches on_tcp_read.
func (p *Probes) detachTCPRead() {
	if err := p.tcpReadOn.Set(uint32(0)); err != nil {
		p.log.Debug("bpf: clear tcp_read_on", "err", err)
	}
	p.detach(tcpReadProgram)
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
