package workers

import (
	"container/heap"
	"context"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// cruising is an aimd past slow start at limit, with a 100 ms RTT known.
func cruising(limit, ceiling int, now time.Time) *aimd {
	a := newAIMD(ceiling, now)
	a.limit, a.slowStart, a.srtt, a.base = limit, false, 0.1, 0.1
	return a
}

// round starts one attempt per rtt given, all at once with the limit
// reached or not, and has each answered after its rtt (a negative one: a
// 429 after that long).
func round(a *aimd, c *clock, reached bool, rtts ...time.Duration) {
	start := c.now()
	for i := range rtts {
		used := i + 1
		if reached {
			used = a.limit
		}
		a.begin(used, start)
	}
	var waited time.Duration
	for _, r := range slices.Sorted(slices.Values(rtts)) {
		pushback := r < 0
		if pushback {
			r = -r
		}
		c.advance(r - waited)
		waited = r
		a.sample(r, pushback, c.now())
	}
}

func repeat(d time.Duration, n int) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = d
	}
	return out
}

const ms = time.Millisecond

// TestAIMDOneDecreasePerRoundTrip: a burst of 429s within one round trip
// lowers the limit once, not once per answer; a 429 to an attempt begun
// before that decrease does not lower it again, however late it comes;
// one begun after it may, a window later.
func TestAIMDOneDecreasePerRoundTrip(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	a := cruising(40, 64, c.now())
	a.begin(40, c.now()) // an attempt that will come back late
	late := c.now()
	rtts := repeat(-4*ms, 20)
	for i := range rtts {
		rtts[i] *= time.Duration(i + 1) // 429s spread over 80 ms
	}
	round(a, c, true, rtts...)
	if a.limit != 36 {
		t.Fatalf("20 429s within 80 ms: limit %d, want 36 (one decrease by 0.9)", a.limit)
	}
	c.advance(200 * ms)
	a.sample(c.now().Sub(late), true, c.now())
	if a.limit != 36 {
		t.Fatalf("a late 429 to an attempt begun before the decrease: limit %d, want 36", a.limit)
	}
	round(a, c, true, -ms)
	if a.limit != 32 {
		t.Fatalf("a 429 to an attempt begun after the decrease: limit %d, want 32", a.limit)
	}
	round(a, c, true, -ms)
	if a.limit != 32 {
		t.Fatalf("another 429 within the window: limit %d, want 32", a.limit)
	}
}

// TestAIMDGrowsOnlyWhenUsed: round trips in which the limit was never
// reached leave it alone, however good the latency; reaching it raises it
// by one per round trip.
func TestAIMDGrowsOnlyWhenUsed(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	a := cruising(10, 64, c.now())
	for range 50 {
		round(a, c, false, repeat(100*ms, 4)...)
	}
	if a.limit != 10 {
		t.Fatalf("limit %d after 50 round trips at 4 in flight, want 10", a.limit)
	}
	for range 5 {
		round(a, c, true, repeat(100*ms, a.limit)...)
	}
	if a.limit != 15 {
		t.Fatalf("limit %d after 5 round trips at the limit, want 15", a.limit)
	}
}

// TestAIMDSlowStart: from 1 the limit doubles each round trip while used,
// up to the ceiling; the first push-back halves it and ends slow start.
func TestAIMDSlowStart(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	a := newAIMD(64, c.now())
	var seen []int
	for range 8 {
		round(a, c, true, repeat(100*ms, a.limit)...)
		seen = append(seen, a.limit)
	}
	if !slices.Equal(seen, []int{1, 2, 4, 8, 16, 32, 64, 64}) {
		t.Fatalf("limits %v, want doubling from 1 to the ceiling 64", seen)
	}
	a = newAIMD(64, c.now())
	a.limit = 16
	round(a, c, true, -ms)
	if a.limit != 8 || a.slowStart {
		t.Fatalf("a 429 in slow start at 16: limit %d (slow start %v), want 8 and over", a.limit, a.slowStart)
	}
}

// TestAIMDLatency: a round trip whose mean RTT is over 1.5 times the base
// lowers the limit by 0.9, once per round trip; a single slow answer among
// many does not; a new normal that 3 decreases did not bring down is taken
// as the base, and the limit grows again.
func TestAIMDLatency(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	a := cruising(20, 64, c.now())
	round(a, c, true, repeat(100*ms, 20)...)
	round(a, c, true, append(repeat(100*ms, 20), 5*time.Second)...)
	round(a, c, true, repeat(100*ms, 20)...)
	if a.limit != 23 {
		t.Fatalf("one 5 s answer among 21: limit %d, want 23 (no decrease)", a.limit)
	}
	var seen []int
	for range 14 {
		round(a, c, true, repeat(300*ms, 20)...)
		seen = append(seen, a.limit)
	}
	// Three decreases by 0.9 (23, 20, 18, 16), one per window, then the
	// base moves and the limit grows again.
	if low, last := slices.Min(seen), seen[len(seen)-1]; low != 16 || last < 18 || seen[1] != 20 {
		t.Fatalf("limits %v at a lasting 300 ms: want 20 after the first, then down to 16 and up again", seen)
	}
	if a.base < 0.29 {
		t.Fatalf("base RTT %.3fs after 300 ms round trips that decreases did not help, want 0.3", a.base)
	}
}

// simBackend is a backend in simulated time: it serves capacity requests
// at once, each for rtt; past that it answers 429 at once (or, with
// queue, serves them all, slower in proportion).
type simBackend struct {
	capacity int
	rtt      time.Duration
	queue    bool
	busy     int
	jitter   float64 // RTTs vary by ± this part of rtt, with rng
	rng      *rand.Rand
}

type simEvent struct {
	at      time.Time
	p       *Permit
	healthy bool
	served  bool
}

type simEvents []simEvent

func (e simEvents) Len() int           { return len(e) }
func (e simEvents) Less(i, j int) bool { return e[i].at.Before(e[j].at) }
func (e simEvents) Swap(i, j int)      { e[i], e[j] = e[j], e[i] }
func (e *simEvents) Push(x any)        { *e = append(*e, x.(simEvent)) }
func (e *simEvents) Pop() any {
	old := *e
	x := old[len(old)-1]
	*e = old[:len(old)-1]
	return x
}

// simStats are what one stretch of a simulation saw.
type simStats struct {
	ok, rejected int
	limits       []int // the limit every 10 ms
}

// simulate runs a limiter with an endless backlog against be for d, one
// millisecond at a time, starting every delivery the limiter admits.
func simulate(l *Limiter, c *clock, be *simBackend, events *simEvents, d time.Duration) simStats {
	var st simStats
	end := c.now().Add(d)
	for step := 0; c.now().Before(end); step++ {
		for events.Len() > 0 && !(*events)[0].at.After(c.now()) {
			ev := heap.Pop(events).(simEvent)
			if ev.served {
				be.busy--
			}
			ev.p.Done(ev.healthy)
		}
		for {
			p := l.TryAcquire()
			if p == nil {
				break
			}
			p.Begin()
			switch {
			case be.busy < be.capacity || be.queue:
				be.busy++
				rtt := be.rtt
				if be.queue && be.busy > be.capacity {
					rtt = rtt * time.Duration(be.busy) / time.Duration(be.capacity)
				}
				if be.jitter > 0 {
					rtt = time.Duration(float64(rtt) * (1 - be.jitter + 2*be.jitter*be.rng.Float64()))
				}
				heap.Push(events, simEvent{at: c.now().Add(rtt), p: p, healthy: true, served: true})
				st.ok++
			default:
				heap.Push(events, simEvent{at: c.now().Add(time.Millisecond), p: p})
				st.rejected++
			}
		}
		if step%10 == 0 {
			st.limits = append(st.limits, l.State().Limit)
		}
		c.advance(time.Millisecond)
	}
	return st
}

func newSimLimiter(concurrency int) (*Limiter, *clock) {
	c := &clock{t: time.Unix(0, 0)}
	l := NewLimiter(Settings{Concurrency: concurrency, Adaptive: true}, 0, 0)
	l.now = c.now
	l.ad = newAIMD(concurrency, c.now()) // on the fake clock
	return l, c
}

// followed is how long into st the limit first stayed within [lo, hi] for
// a second; -1 if it never did.
func (st simStats) followed(lo, hi int) time.Duration {
	run := 0
	for i, v := range st.limits {
		if v >= lo && v <= hi {
			run++
			if run == 100 {
				return time.Duration(i-99) * 10 * time.Millisecond
			}
		} else {
			run = 0
		}
	}
	return -1
}

// TestAdaptiveSimulated drives the limiter against simulated backends:
// one that holds 8 requests of 100 ms and answers 429 past that (80/s),
// later 16 and then 4; one that queues instead; one with noisy latency.
func TestAdaptiveSimulated(t *testing.T) {
	t.Run("429 past capacity, capacity changes", func(t *testing.T) {
		l, c := newSimLimiter(64)
		be := &simBackend{capacity: 8, rtt: 100 * time.Millisecond, jitter: 0.1, rng: rand.New(rand.NewPCG(1, 2))}
		events := &simEvents{}
		simulate(l, c, be, events, 2*time.Second) // finds it
		st := simulate(l, c, be, events, 10*time.Second)
		rate, share := float64(st.ok)/10, float64(st.rejected)/float64(st.ok+st.rejected)
		t.Logf("capacity 8: %.1f delivered/s of 80, %.1f%% answered 429", rate, 100*share)
		if rate < 0.9*80 || share > 0.1 {
			t.Fatalf("capacity 8: %.1f delivered/s (want >= 72), %.1f%% 429s (want <= 10%%)", rate, 100*share)
		}
		// A drop to a quarter draws a burst of 429s until the limit is down:
		// bounded by the slots pushed-back attempts hold for a round trip.
		for _, phase := range []struct {
			capacity, lo, hi int
			max429           float64 // over the 10 s after the change
		}{{16, 14, 17, 0.05}, {4, 3, 5, 0.25}, {8, 7, 9, 0.10}} {
			be.capacity = phase.capacity
			st := simulate(l, c, be, events, 10*time.Second)
			took := st.followed(phase.lo, phase.hi)
			share := float64(st.rejected) / float64(st.ok+st.rejected)
			t.Logf("capacity -> %d: the limit within [%d, %d] after %v; %.1f delivered/s of %d, %.1f%% answered 429",
				phase.capacity, phase.lo, phase.hi, took, float64(st.ok)/10, phase.capacity*10, 100*share)
			if share > phase.max429 {
				t.Fatalf("capacity -> %d: %.1f%% of the attempts answered 429, want <= %.0f%%", phase.capacity, 100*share, 100*phase.max429)
			}
			if took < 0 || took > 5*time.Second {
				t.Fatalf("capacity -> %d: limit did not follow within 5 s (%v); limits every 10 ms: %v",
					phase.capacity, took, st.limits)
			}
		}
	})
	t.Run("static 64 against the same backend", func(t *testing.T) {
		c := &clock{t: time.Unix(0, 0)}
		l := NewLimiter(Settings{Concurrency: 64}, 0, 0)
		l.now = c.now
		st := simulate(l, c, &simBackend{capacity: 8, rtt: 100 * time.Millisecond}, &simEvents{}, 2*time.Second)
		share := float64(st.rejected) / float64(st.ok+st.rejected)
		t.Logf("static 64: %.1f%% answered 429", 100*share)
		if share < 0.9 {
			t.Fatalf("static 64: only %.1f%% 429s; the contrast is gone", 100*share)
		}
	})
	t.Run("queueing backend", func(t *testing.T) {
		l, c := newSimLimiter(64)
		be := &simBackend{capacity: 8, rtt: 100 * time.Millisecond, queue: true, jitter: 0.1, rng: rand.New(rand.NewPCG(1, 2))}
		events := &simEvents{}
		simulate(l, c, be, events, 3*time.Second)
		st := simulate(l, c, be, events, 10*time.Second)
		peak := 0
		for _, v := range st.limits {
			peak = max(peak, v)
		}
		t.Logf("queueing backend of 8: limit up to %d, %.1f delivered/s", peak, float64(st.ok)/10)
		if peak > 16 || float64(st.ok)/10 < 0.9*80 {
			t.Fatalf("queueing backend of 8: limit up to %d (want <= 16), %.1f delivered/s (want >= 72)", peak, float64(st.ok)/10)
		}
	})
	t.Run("noisy latency", func(t *testing.T) {
		l, c := newSimLimiter(64)
		be := &simBackend{capacity: 1000, rtt: 100 * time.Millisecond, jitter: 0.4, rng: rand.New(rand.NewPCG(1, 2))}
		st := simulate(l, c, be, &simEvents{}, 10*time.Second)
		if took := st.followed(64, 64); took < 0 || took > 5*time.Second {
			t.Fatalf("latency ±40%%: limit did not reach 64 within 5 s; limits every 10 ms: %v", st.limits)
		}
	})
}

// TestAdaptiveIdleDispatcher: permits a dispatcher holds while it waits
// for messages, and given back unused, do not count as the limit reached;
// a trickle of one delivery at a time raises the limit to 2, no further.
func TestAdaptiveIdleDispatcher(t *testing.T) {
	l, c := newSimLimiter(64)
	for range 100 {
		var held []*Permit
		for p := l.TryAcquire(); p != nil; p = l.TryAcquire() {
			held = append(held, p)
		}
		c.advance(100 * time.Millisecond)
		for _, p := range held {
			p.Cancel()
		}
	}
	if got := l.State().Limit; got != 1 {
		t.Fatalf("limit %d after 10 s of unused permits, want 1", got)
	}
	for range 100 {
		p := l.TryAcquire()
		p.Begin()
		c.advance(100 * time.Millisecond)
		p.Done(true)
	}
	if got := l.State().Limit; got != 2 {
		t.Fatalf("limit %d after a trickle of one at a time, want 2", got)
	}
}

// TestAdaptiveSettings: the limit shows in State, stays within
// concurrency after the share, restarts from 1 when adaptive is turned on
// and is concurrency again when it is turned off.
func TestAdaptiveSettings(t *testing.T) {
	l, c := newSimLimiter(64)
	be := &simBackend{capacity: 1000, rtt: 100 * time.Millisecond}
	events := &simEvents{}
	simulate(l, c, be, events, 2*time.Second)
	if st, s := l.State(), l.Settings(); st.Limit != 64 || !s.Adaptive || s.Concurrency != 64 {
		t.Fatalf("state %+v settings %+v, want limit 64 of 64, adaptive", st, s)
	}
	l.SetShare(0.25)
	if got := l.State().Limit; got != 16 {
		t.Fatalf("limit %d with a quarter share of 64, want 16", got)
	}
	l.SetShare(1)
	s := l.Settings()
	s.Adaptive = false
	l.Set(s)
	if got := l.State().Limit; got != 64 {
		t.Fatalf("limit %d with adaptive off, want 64", got)
	}
	s.Adaptive = true
	l.Set(s)
	if got := l.State().Limit; got != 1 {
		t.Fatalf("limit %d with adaptive on again, want 1", got)
	}
	s.Concurrency = 32
	l.Set(s) // still adaptive: the limit is kept, the ceiling changes
	simulate(l, c, be, events, 2*time.Second)
	if got := l.State().Limit; got != 32 {
		t.Fatalf("limit %d after concurrency 32, want 32", got)
	}
}

// TestAdaptiveHeldSlot: a 429 that comes within a window of the last
// decrease does not lower the limit again, and its slot stays taken for
// the rest of its round trip — a waiting Acquire gets it then, not at once.
func TestAdaptiveHeldSlot(t *testing.T) {
	l := NewLimiter(Settings{Concurrency: 8, Adaptive: true}, 0, 0)
	now := time.Now()
	l.mu.Lock()
	l.ad = cruising(2, 8, now.Add(-time.Second))
	l.ad.srtt, l.ad.lastCut = 0.3, now // a 300 ms round trip; just lowered
	l.mu.Unlock()
	ctx := context.Background()
	first, _ := l.Acquire(ctx)
	second, _ := l.Acquire(ctx)
	first.Begin()
	second.Begin()
	start := time.Now()
	first.Done(false)
	if l.TryAcquire() != nil || l.State().Limit != 2 {
		t.Fatalf("a 429 right after a decrease: a slot handed on at once, or the limit %d changed", l.State().Limit)
	}
	p, err := l.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 200*time.Millisecond || el > 2*time.Second {
		t.Fatalf("the held slot came free after %v, want about 300 ms (the rest of the round trip)", el)
	}
	p.Cancel()
	second.Done(true)
}
