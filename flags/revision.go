package flags

import "github.com/pilotlight/pilotlight/functions"

// RevisionChoice is what PickRevision decided.
type RevisionChoice struct {
	// Revision serves the request; never empty.
	Revision string
	// Variant is the flag variant whose value is Revision ("" when the
	// revision came from the manifest's DefaultRevision).
	Variant string
	// Reason and ErrorCode are the flag evaluation's.
	Reason    string
	ErrorCode string
	// FellBack is true when the evaluation chose a variant naming a
	// revision the function does not have (Unknown): the router counts it.
	FellBack bool
	Unknown  string
}

// ServingRevision is the one rule for "which revision": value is what the
// function's flag evaluated to ("" when it gave nothing usable: the flag is
// missing or DISABLED, has no defaultVariant, failed, or its variant is not
// a string). A value naming one of the function's revisions is served. A
// value naming none (a typo, a revision not deployed yet) falls back to the
// flag's default variant, when that names a revision the function has
// (fellBack is set so the router can count it). Everything else goes to
// the manifest's DefaultRevision. The local router (per request) and the
// Knative traffic split (per bucket) both answer through it.
func (s *Set) ServingRevision(m *functions.Manifest, value string) (revision, variant string, fellBack bool) {
	if value == "" {
		return m.DefaultRevision(), "", false
	}
	if _, ok := m.Revision(value); ok {
		return value, s.variantOf(m.Flag, value), false
	}
	if f := s.flags[m.Flag]; f != nil && f.hasDefault {
		if def, ok := f.variants[f.defVariant].(string); ok {
			if _, ok := m.Revision(def); ok {
				return def, f.defVariant, true
			}
		}
	}
	return m.DefaultRevision(), "", true
}

// variantOf names the variant of flag key whose value is revision ("" when
// none does; the first in name order when several do).
func (s *Set) variantOf(key, revision string) string {
	f := s.flags[key]
	if f == nil {
		return ""
	}
	best := ""
	for name, v := range f.variants {
		if v == revision && (best == "" || name < best) {
			best = name
		}
	}
	return best
}

// PickRevision evaluates the function's revision flag (m.Flag) for a
// request's context and applies ServingRevision.
func (s *Set) PickRevision(m *functions.Manifest, ctx map[string]any) RevisionChoice {
	r := s.Evaluate(m.Flag, ctx)
	c := RevisionChoice{Reason: r.Reason, ErrorCode: r.ErrorCode}
	value, _ := r.Value.(string)
	if r.ErrorCode != "" {
		value = ""
	}
	c.Revision, c.Variant, c.FellBack = s.ServingRevision(m, value)
	if c.FellBack {
		c.Unknown = value
	} else if value != "" {
		c.Variant = r.Variant
	}
	return c
}
