package console

import (
	"github.com/pilotlight/pilotlight/bpf"
	"github.com/pilotlight/pilotlight/engine"
	"github.com/pilotlight/pilotlight/flags"
	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/rollout"
	"github.com/pilotlight/pilotlight/router"
)

// Source is what the console reads from the platform on every tick. The
// console owns nothing it shows: it samples a Source and keeps a short
// history (latency, rate, cold starts, finished rollouts) of its own.
type Source interface {
	Read() State
}

// State is the platform as of one read.
type State struct {
	// Backend is "local" (the engine's child processes) or "knative".
	Backend   string
	Functions []Function
	// Pool lists the pilot light's idle generic processes (local backend).
	Pool []engine.ProcessStatus
	// Processes lists every runtime process and the revisions it holds
	// (local backend): shared ones hold many.
	Processes []engine.ProcessView
	// Probes says the eBPF probes are attached; Timelines then holds the
	// latest kernel cold-start timeline per "function/revision".
	Probes    bool
	Timelines map[string]bpf.Timeline
	// RolloutsOn says the canary controller runs (it needs a flag file).
	RolloutsOn bool
	Rollouts   []rollout.Status
	// Flags is nil when serve runs without a flag file.
	Flags *Flags
}

// Function is one function and its revisions.
type Function struct {
	Name, Handler, Flag string
	Revisions           []Revision
}

// Revision is one revision: its share of the traffic and, on the local
// backend, the engine's view of its instances (nil on Knative).
type Revision struct {
	Name, Tag string
	Weight    int
	Engine    *engine.Status
}

// Flags is the flag file in force.
type Flags struct {
	Path, Version string
}

// Platform is the Source over today's concrete parts, as serve builds
// them. Nil fields are parts that are off (Knative backend: no Engine;
// no flag file: no Flags, Rollouts or Picker; probes off: no Probes).
type Platform struct {
	Functions []*functions.Manifest
	Picker    router.Picker
	Engine    *engine.Engine
	Probes    *bpf.Probes
	// Timelines, without Probes, gives the nodes' agents' timelines (the
	// Knative backend: agent.Reader, --bpf-agents).
	Timelines func() map[string]bpf.Timeline
	Rollouts  *rollout.Controller
	Flags     *flags.Watcher
	FlagsPath string
}

// Read implements Source.
func (p Platform) Read() State {
	st := State{Backend: "knative"}
	var statuses map[string]*engine.Status
	if p.Engine != nil {
		st.Backend = "local"
		st.Pool = p.Engine.PoolStatus()
		st.Processes = p.Engine.Processes()
		statuses = map[string]*engine.Status{}
		for _, s := range p.Engine.Statuses() {
			statuses[s.Function+"/"+s.Revision] = &s
		}
	}
	picker := p.Picker
	if picker == nil {
		picker = router.DefaultPicker{}
	}
	for _, fn := range p.Functions {
		weights := picker.Weights(fn)
		f := Function{Name: fn.Name, Handler: fn.Handler, Flag: fn.Flag}
		for _, r := range fn.Revisions {
			f.Revisions = append(f.Revisions, Revision{Name: r.Name, Tag: r.Tag, Weight: weights[r.Name], Engine: statuses[fn.Name+"/"+r.Name]})
		}
		st.Functions = append(st.Functions, f)
	}
	switch {
	case p.Probes != nil:
		st.Probes = true
		st.Timelines = p.Probes.LatestTimelines()
	case p.Timelines != nil:
		st.Probes = true
		st.Timelines = p.Timelines()
	}
	if p.Rollouts != nil {
		st.RolloutsOn = true
		st.Rollouts = p.Rollouts.List()
	}
	if p.Flags != nil {
		st.Flags = &Flags{Path: p.FlagsPath, Version: p.Flags.Set().Version()}
	}
	return st
}
