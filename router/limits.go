package router

import "github.com/pilotlight/pilotlight/internal/listener"

// Limits are the router listener's protections against slow or oversized
// clients; every one is a serve flag. The type and its defaults are
// package listener's, shared with every instance.
type Limits = listener.Limits

// DefaultLimits are the defaults documented in SECURITY.md.
func DefaultLimits() Limits { return listener.DefaultLimits() }
