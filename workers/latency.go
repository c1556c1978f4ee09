package workers

import (
	"math"
	"sync/atomic"
	"time"
)

// latencyBounds are the upper bounds of the attempt-duration histogram's
// buckets, from a local backend's millisecond to past the default 10 s
// timeout; a last, unbounded bucket takes the rest. Between 50 ms and 2.5 s,
// where slow backends answer, they are about 1.3-1.5x apart, so a p99
// read from them is within a bucket's width of the truth (with 250 ms
// and 500 ms alone, a backend answering in 200-300 ms read p99 495 ms).
var latencyBounds = [...]time.Duration{
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond,
	25 * time.Millisecond, 50 * time.Millisecond, 75 * time.Millisecond, 100 * time.Millisecond,
	150 * time.Millisecond, 200 * time.Millisecond, 250 * time.Millisecond, 300 * time.Millisecond,
	400 * time.Millisecond, 500 * time.Millisecond, 750 * time.Millisecond, time.Second,
	1500 * time.Millisecond, 2 * time.Second, 2500 * time.Millisecond, 5 * time.Second,
	10 * time.Second, 30 * time.Second, time.Minute,
}

// LatencyBuckets is the number of bounded buckets of a Latency.
const LatencyBuckets = len(latencyBounds)

// LatencyBounds returns the upper bounds of a Latency's buckets, in
// increasing order: Latency.Buckets[i] counts the attempts that took at
// most LatencyBounds()[i].
func LatencyBounds() []time.Duration { return append([]time.Duration(nil), latencyBounds[:]...) }

// Latency is a snapshot of how long a pool's attempts took, from the
// pool's start: a histogram in the shape Prometheus uses. Buckets are
// cumulative (each includes the ones below it); Count also includes the
// attempts slower than the last bound. Subtract an earlier snapshot with
// LatencyQuantile to look at a window. An attempt is counted once its
// backend answered, failed to answer or timed out; attempts sluice could
// not send, or that a shutdown cut short, are not.
type Latency struct {
	Buckets [LatencyBuckets]uint64
	Count   uint64
	Sum     time.Duration
}

// latencyHist records attempt durations without locks: one atomic add to
// a bucket and one to the sum per attempt. A nil *latencyHist records
// nothing (metrics: false).
type latencyHist struct {
	counts [LatencyBuckets + 1]atomic.Uint64 // per bucket, not cumulative; the last is unbounded
	sum    atomic.Int64                      // nanoseconds
}

// observe records one attempt that took d.
func (h *latencyHist) observe(d time.Duration) {
	if h == nil {
		return
	}
	i := 0
	for i < LatencyBuckets && d > latencyBounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sum.Add(int64(d))
}

// snapshot reads the histogram. Attempts recorded while it reads may be
// in the buckets and not yet in the sum, never the other way round
// within a bucket; Count always equals what the buckets hold.
func (h *latencyHist) snapshot() Latency {
	var l Latency
	if h == nil {
		return l
	}
	var n uint64
	for i := range LatencyBuckets {
		n += h.counts[i].Load()
		l.Buckets[i] = n
	}
	l.Count = n + h.counts[LatencyBuckets].Load()
	l.Sum = time.Duration(h.sum.Load())
	return l
}

// LatencyQuantile estimates the q-quantile (0 <= q <= 1; 0.5 is the
// median, 0.99 the p99) of the attempts recorded between two snapshots of
// one pool, prev taken before cur: for the attempts since the start, pass
// Latency{} as prev. It reads the bucket deltas the way Prometheus's
// histogram_quantile does: linear within the bucket that holds the rank,
// and the last bound when the rank falls past it. It returns 0 when no
// attempt was recorded in between. A cur older than prev (a pool
// restarted) is read from its own start.
func LatencyQuantile(prev, cur Latency, q float64) time.Duration {
	if cur.Count < prev.Count {
		prev = Latency{}
	}
	total := cur.Count - prev.Count
	if total == 0 || math.IsNaN(q) {
		return 0
	}
	q = min(max(q, 0), 1)
	rank := q * float64(total)
	var below uint64 // attempts in the buckets under i
	for i := range LatencyBuckets {
		in := cur.Buckets[i] - prev.Buckets[i] // cumulative delta
		if float64(in) >= rank && in > 0 {
			lo := time.Duration(0)
			if i > 0 {
				lo = latencyBounds[i-1]
			}
			hi := latencyBounds[i]
			frac := (rank - float64(below)) / float64(in-below)
			return lo + time.Duration(frac*float64(hi-lo))
		}
		below = in
	}
	return latencyBounds[LatencyBuckets-1]
}
