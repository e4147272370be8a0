package bpf

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
)

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
	// ParentPID), or where its exec was just seen (the node agent's
	// ExecComm). A running pod the agent finds later is not: opening its
	// cold start would keep the cold-start programs attached for nothing.
	if p.marked || p.execOpen(key) {
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

// execOpen says pid's exec was seen and its timeline is not complete.
func (p *Probes) execOpen(pid uint32) bool {
	_, ok := p.states[pid].execTime()
	return ok && !p.done[pid]
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
