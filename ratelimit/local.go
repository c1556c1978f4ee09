package ratelimit

import (
	"context"
	"hash/maphash"
	"math"
	"slices"
	"strings"
	"sync"
	"time"
)

const (
	// shardCount spreads the keys over this many locks (a power of two).
	shardCount = 64
	// sweepEvery is how often a shard drops its full buckets even when it
	// does not grow.
	sweepEvery = time.Minute
	// minSweepLen is the size below which a shard is not swept for growth.
	minSweepLen = 64
	// defaultMaxKeys caps the keys a Local tracks (about 100 bytes each).
	defaultMaxKeys = 1 << 20
)

// Local is a Limiter in memory, for one process: a GCRA per key, which is
// a token bucket kept as one number, the theoretical arrival time (TAT) of
// the next request. A request is allowed when it would not push the TAT
// more than Burst intervals past now.
//
// A key whose bucket has refilled holds no information, so it is dropped:
// a shard sweeps out its full buckets when it has doubled since its last
// sweep or a minute has passed, on the call that finds it so (Local starts
// no goroutine). Memory is thus bounded by the keys active within one
// refill time, and at most 1<<20 keys in all: past that cap a sweep also
// drops the keys nearest to full, whose clients start over with a full
// burst.
//
// Allow on a key it knows takes one uncontended lock and allocates nothing.
type Local struct {
	now      func() int64 // monotonic nanoseconds; tests set a fake clock
	seed     maphash.Seed
	maxShard int // keys per shard at most
	shards   [shardCount]shard
}

type shard struct {
	mu        sync.Mutex
	tat       map[string]int64 // key -> theoretical arrival time, on Local.now's clock
	sweepLen  int              // len(tat) at which the shard is swept for growth
	nextSweep int64            // when the shard is swept regardless of growth
	_         [64]byte         // keep neighbouring shards' locks off one cache line
}

// NewLocal returns an empty Local.
func NewLocal() *Local {
	start := time.Now()
	return newLocal(func() int64 { return int64(time.Since(start)) }, defaultMaxKeys)
}

func newLocal(now func() int64, maxKeys int) *Local {
	l := &Local{now: now, seed: maphash.MakeSeed(), maxShard: max(1, maxKeys/shardCount)}
	first := now() + int64(sweepEvery)
	for i := range l.shards {
		l.shards[i].tat = make(map[string]int64)
		l.shards[i].sweepLen = min(minSweepLen, l.maxShard)
		l.shards[i].nextSweep = first
	}
	return l
}

// Allow decides for one request under key; it never fails.
func (l *Local) Allow(_ context.Context, key string, lim Limit) (Result, error) {
	return l.allow(key, lim), nil
}

func (l *Local) allow(key string, lim Limit) Result {
	burst := max(lim.Burst, 1)
	t := interval(lim.Rate, burst)
	tau := t * int64(burst) // how far past now the TAT may run
	now := l.now()
	s := &l.shards[maphash.String(l.seed, key)&(shardCount-1)]

	s.mu.Lock()
	tat, known := s.tat[key]
	tat = max(tat, now)
	next := tat + t
	if next-now > tau {
		s.mu.Unlock()
		return Result{Limit: burst, RetryAfter: time.Duration(next - tau - now), Reset: time.Duration(tat - now)}
	}
	if known {
		s.tat[key] = next
		if now >= s.nextSweep {
			s.sweep(now, l.maxShard)
		}
	} else {
		if len(s.tat) >= s.sweepLen || now >= s.nextSweep {
			s.sweep(now, l.maxShard)
		}
		s.tat[strings.Clone(key)] = next // key may point into a reused buffer
	}
	s.mu.Unlock()
	return Result{Allowed: true, Limit: burst, Remaining: int((tau - (next - now)) / t), Reset: time.Duration(next - now)}
}

// interval is the emission interval of rate, in nanoseconds: at least 1,
// and small enough that burst of them do not overflow. A rate that is not
// > 0 gets the largest, so a burst and then nothing.
func interval(rate float64, burst int) int64 {
	hi := max(1, int64(math.MaxInt64/4)/int64(burst))
	if !(rate > 0) {
		return hi
	}
	t := float64(time.Second) / rate
	if t >= float64(hi) {
		return hi
	}
	return max(1, int64(math.Round(t)))
}

// sweep drops the keys whose bucket is full at now; if the shard is still
// at its cap it drops arbitrary keys down to 7/8 of it. It then sets when
// the shard is swept next. The caller holds s.mu.
func (s *shard) sweep(now int64, maxLen int) {
	before := len(s.tat)
	for k, tat := range s.tat {
		if tat <= now {
			delete(s.tat, k)
		}
	}
	if len(s.tat) >= maxLen {
		s.shed(maxLen * 7 / 8)
	}
	if before >= 4*minSweepLen && len(s.tat) < before/4 {
		// A Go map keeps its table after deletes; copy to give it back.
		m := make(map[string]int64, len(s.tat))
		for k, v := range s.tat {
			m[k] = v
		}
		s.tat = m
	}
	s.sweepLen = min(max(2*len(s.tat), minSweepLen), maxLen)
	s.nextSweep = now + int64(sweepEvery)
}

// shed drops the keys nearest to full until the shard holds at most keep:
// those buckets tell least about their clients, who start over with a full
// burst. The cut is estimated from a sample, then made exact by arbitrary
// deletes. The caller holds s.mu.
func (s *shard) shed(keep int) {
	var sample [256]int64
	n := 0
	for _, tat := range s.tat {
		if n == len(sample) {
			break
		}
		sample[n] = tat
		n++
	}
	slices.Sort(sample[:n])
	cut := sample[min(n-1, n*(len(s.tat)-keep)/len(s.tat))]
	for k, tat := range s.tat {
		if tat <= cut && len(s.tat) > keep {
			delete(s.tat, k)
		}
	}
	for k := range s.tat {
		if len(s.tat) <= keep {
			break
		}
		delete(s.tat, k)
	}
}

// len is how many keys l holds.
func (l *Local) len() int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += len(s.tat)
		s.mu.Unlock()
	}
	return n
}
