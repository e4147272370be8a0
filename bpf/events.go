package bpf

import (
	"encoding/binary"
	"errors"
	"os"
	"slices"
	"time"

	"github.com/cilium/ebpf/ringbuf"
)

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
		if p.execComm && arg > 0 {
			// A container's process: runc forked it before its exec.
			p.state(pid).first(EventContainerStart, p.clock.wall(uint64(arg)))
		}
		if p.onExec != nil {
			go p.onExec(int(pid))
		}
	case evListen:
		p.stateIfOpen(pid).firstWith(EventListen, at, decodeAnatSnap(payload))
	case evFirstAccept:
		p.stateIfOpen(pid).first(EventFirstAccept, at)
	case evAccept:
		if arg == 1 {
			// The tagged request's connection, reported at its response:
			// its establishment is in the past, with no snapshot.
			p.stateIfOpen(pid).first(EventAccept, at)
		} else {
			p.stateIfOpen(pid).firstWith(EventAccept, at, decodeAnatSnap(payload))
		}
	case evReady:
		if p.done[pid] {
			return
		}
		st := p.state(pid)
		if _, ok := st.points[MarkReady]; ok {
			return
		}
		st.firstWith(MarkReady, at, decodeAnatSnap(payload))
		p.loaded(pid)
		p.publishAfter(pid, taggedResponseGrace)
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
		if c.unix && !p.unixSeen {
			p.unixSeen = true
			if err := p.attach(unixReadProgram); err != nil {
				p.log.Warn("bpf: Unix socket reads will not be measured", "err", err)
			}
		}
		if !c.unix {
			p.tcpConn(kind == evConnOpen)
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

// connection counts a tracked instance's connection opening or closing, and
// reports an unexpected one. Callers hold p.mu.
func (p *Probes) connection(at time.Time, pid uint32, open bool, c connEvent) {
	in := p.instances[pid]
	if in == nil {
		return // untracked meanwhile
	}
	if !open {
		p.connBytes.WithLabelValues(in.function, in.revision, c.direction, c.peerClass, "received").Observe(float64(c.rx))
		if !c.unix { // a Unix socket's sent bytes are not seen (README)
			p.connBytes.WithLabelValues(in.function, in.revision, c.direction, c.peerClass, "sent").Observe(float64(c.tx))
		}
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
	case EventContainerStart, EventExec, EventListen, EventFirstAccept, EventAccept, EventFirstWrite:
		return false
	}
	return true
}
