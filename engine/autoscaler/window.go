package autoscaler

import "time"

// bucketDuration is the width of one time bucket of observations.
// Knative's aggregation uses the same one-second granularity.
const bucketDuration = time.Second

// bucket holds the observations recorded within one second.
type bucket struct {
	second int64 // Unix second the bucket covers; meaningful only when count > 0
	sum    float64
	count  int
}

// window is a ring of one-second buckets long enough for the stable window.
// The panic window is read from the newest buckets of the same ring.
//
// Unlike Knative's TimedFloat64Buckets, where several pods' samples are added
// into one bucket and an empty bucket means zero, here a single sampler feeds
// the ring: a bucket holds the mean of its samples and an empty bucket means
// "no sample landed in that second" (sampling jitter), so it is skipped rather
// than counted as zero. A window with fewer seconds of data than its length is
// therefore averaged over the seconds that exist, as Knative does at startup.
type window struct {
	buckets []bucket
	newest  int64 // newest Unix second recorded
	any     bool  // at least one observation recorded
}

func newWindow(length time.Duration) *window {
	return &window{buckets: make([]bucket, bucketsFor(length))}
}

// bucketsFor returns how many one-second buckets cover d (at least one).
func bucketsFor(d time.Duration) int {
	n := int((d + bucketDuration - 1) / bucketDuration)
	if n < 1 {
		n = 1
	}
	return n
}

// record adds one observation at now. Observations older than the ring's
// span relative to the newest one are dropped: no window can see them.
func (w *window) record(now time.Time, v float64) {
	sec := now.Unix()
	if w.any && sec <= w.newest-int64(len(w.buckets)) {
		return
	}
	b := &w.buckets[slot(sec, len(w.buckets))]
	if b.count == 0 || b.second != sec {
		*b = bucket{second: sec}
	}
	b.sum += v
	b.count++
	if !w.any || sec > w.newest {
		w.newest = sec
	}
	w.any = true
}

// average returns the mean of the per-second means over the last length of
// time ending at now (the bucket containing now included), and the number of
// seconds that had data. No data gives 0, 0.
func (w *window) average(now time.Time, length time.Duration) (avg float64, seconds int) {
	n := bucketsFor(length)
	if n > len(w.buckets) {
		n = len(w.buckets)
	}
	end := now.Unix()
	var total float64
	for sec := end - int64(n) + 1; sec <= end; sec++ {
		b := w.buckets[slot(sec, len(w.buckets))]
		if b.count == 0 || b.second != sec {
			continue
		}
		total += b.sum / float64(b.count)
		seconds++
	}
	if seconds == 0 {
		return 0, 0
	}
	return total / float64(seconds), seconds
}

func slot(sec int64, n int) int {
	i := int(sec % int64(n))
	if i < 0 {
		i += n
	}
	return i
}
