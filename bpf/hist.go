package bpf

import (
	"math"
)

// Layout of the C struct hists (probes.bpf.c): one log2 histogram per kind.
const (
	histBuckets = 40 // HIST_BUCKETS: bucket i counts delays in [2^i, 2^(i+1)) ns
	histKinds   = 3
	kindRunq    = 0 // HIST_RUNQ
	kindSockq   = 1 // HIST_SOCKQ
	kindSyscall = 2 // HIST_SYSCALL
)

// Exported bucket bounds: 2^minBoundLog2 ns (~1 µs) to 2^maxBoundLog2 ns
// (~34 s). Finer kernel buckets fold into the first bound.
const (
	minBoundLog2 = 10
	maxBoundLog2 = 35
)

// log2Hist mirrors struct hist.
type log2Hist struct {
	Count   uint64
	SumNS   uint64
	Buckets [histBuckets]uint64
}

// slotHists mirrors struct hists, the value of the hists map (one per CPU).
type slotHists [histKinds]log2Hist

// add adds o's counts to every histogram of h.
func (h *slotHists) add(o *slotHists) {
	for k := range h {
		h[k].Count += o[k].Count
		h[k].SumNS += o[k].SumNS
		for i := range h[k].Buckets {
			h[k].Buckets[i] += o[k].Buckets[i]
		}
	}
}

// addDelta adds cur-prev to h. BPF counters only grow; a counter that went
// backwards (it cannot, short of a bug) contributes nothing rather than
// wrapping around.
func (h *log2Hist) addDelta(cur, prev *log2Hist) {
	h.Count += sub(cur.Count, prev.Count)
	h.SumNS += sub(cur.SumNS, prev.SumNS)
	for i := range h.Buckets {
		h.Buckets[i] += sub(cur.Buckets[i], prev.Buckets[i])
	}
}

func sub(a, b uint64) uint64 {
	if a < b {
		return 0
	}
	return a - b
}

// promBuckets turns log2 buckets into Prometheus cumulative buckets keyed by
// upper bound in seconds, plus the count and sum to report. The count is
// the buckets' total, so it never disagrees with them even if BPF was
// caught between its three atomic adds.
func (h *log2Hist) promBuckets() (count uint64, sumSeconds float64, buckets map[float64]uint64) {
	buckets = make(map[float64]uint64, maxBoundLog2-minBoundLog2+1)
	var cum uint64
	next := 0
	for k := minBoundLog2; k <= maxBoundLog2; k++ {
		// Bucket i holds values < 2^(i+1), so bound 2^k includes buckets i < k.
		for ; next < k && next < histBuckets; next++ {
			cum += h.Buckets[next]
		}
		buckets[math.Ldexp(1, k)/1e9] = cum
	}
	for ; next < histBuckets; next++ {
		cum += h.Buckets[next]
	}
	return cum, float64(h.SumNS) / 1e9, buckets
}
