package bpf

import (
	"time"

	"golang.org/x/sys/unix"
)

// monoClock converts bpf_ktime_get_ns (CLOCK_MONOTONIC) to wall-clock time
// and back. The offset is re-measured on every read tick, so a stepped wall
// clock is followed within a tick.
type monoClock struct {
	offsetNS int64 // wall - monotonic, in ns
	widthNS  int64 // the offset's uncertainty: the monotonic reads bracketing the wall one
}

// measure takes the offset between CLOCK_REALTIME and CLOCK_MONOTONIC,
// reading the monotonic clock on both sides of the wall clock and keeping
// the tightest of a few tries (a preemption between reads would skew it).
func (c *monoClock) measure() error {
	best := int64(-1)
	for range 5 {
		var a, b unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &a); err != nil {
			return err
		}
		wall := time.Now().UnixNano()
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &b); err != nil {
			return err
		}
		width := b.Nano() - a.Nano()
		if best < 0 || width < best {
			best = width
			c.offsetNS = wall - (a.Nano()+b.Nano())/2
			c.widthNS = width
		}
	}
	return nil
}

// wall turns a kernel monotonic timestamp into wall-clock time.
func (c *monoClock) wall(ns uint64) time.Time {
	return time.Unix(0, int64(ns)+c.offsetNS)
}

// mono turns a wall-clock time into the kernel's monotonic nanoseconds.
func (c *monoClock) mono(t time.Time) uint64 {
	return uint64(t.UnixNano() - c.offsetNS)
}
