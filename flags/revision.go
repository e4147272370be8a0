package flags

// RevisionFlagKey is the flag that picks a function's revision.
func RevisionFlagKey(function string) string { return function + "-revision" }

// RevisionChoice is what PickRevision decided.
type RevisionChoice struct {
	// Revision to serve the request; "" means the flag gave no usable
	// revision (flag missing or disabled, code default, an error, or even the
	// default variant names a revision that does not exist): the router uses
	// the function's own default revision.
	Revision string
	// Variant is the flag variant whose value is Revision ("" when none).
	Variant string
	// Reason and ErrorCode are the flag evaluation's.
	Reason    string
	ErrorCode string
	// FellBack is true when the evaluation chose a variant naming a revision
	// that does not exist (Unknown) and the flag's default variant was used
	// instead (or, when that did not help either, Revision is "").
	FellBack bool
	Unknown  string
}

// PickRevision evaluates a function's revision flag for a request's context
// and returns the revision to serve it. exists says whether the function has
// a revision of that name. The guard: when the variant chosen names a
// revision that does not exist (a typo, or a revision not deployed yet), the
// flag's default variant is used instead and FellBack is set, so the router
// can count it; a typo in a flag file then degrades to the stable revision
// rather than failing requests.
//
//	c := set.PickRevision(flags.RevisionFlagKey(fn.Name), evalCtx, func(r string) bool { _, ok := fn.Revision(r); return ok })
//	rev := c.Revision
//	if rev == "" { rev = stableRevision(fn) }
//	if c.FellBack { fellBackTotal.WithLabelValues(fn.Name, c.Unknown).Inc() }
func (s *Set) PickRevision(flagKey string, ctx map[string]any, exists func(revision string) bool) RevisionChoice {
	r := s.Evaluate(flagKey, ctx)
	c := RevisionChoice{Reason: r.Reason, ErrorCode: r.ErrorCode}
	rev, ok := r.Value.(string)
	if !ok || r.ErrorCode != "" {
		return c
	}
	if exists(rev) {
		c.Revision, c.Variant = rev, r.Variant
		return c
	}
	c.FellBack, c.Unknown = true, rev
	f := s.flags[flagKey]
	if f == nil || !f.hasDefault {
		return c
	}
	if def, ok := f.variants[f.defVariant].(string); ok && exists(def) {
		c.Revision, c.Variant = def, f.defVariant
	}
	return c
}
