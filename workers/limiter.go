package workers

import (
	"context"
	"errors"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// maxTokenWait is the longest a caller sleeps on one token reservation, so
// that a rate changed at run time takes effect within it.
const maxTokenWait = 250 * time.Millisecond

// Limiter is the gate every delivery to one backend passes, shared by the
// backend's whole pool: a token bucket (rate, burst), a cap on deliveries in
// flight (concurrency, or with adaptive the limit found between 1 and it),
// a pause switch and a consecutive-failure circuit breaker with half-open
// probes. All settings can change while deliveries wait; a change takes
// effect within maxTokenWait. It is safe for concurrent use.
type Limiter struct {
	mu       sync.Mutex
	tb       *rate.Limiter
	rate     float64 // 0 = unlimited
	burst    int
	limit    int
	paused   bool
	inflight int           // permits out
	used     int           // permits whose delivery began
	share    float64       // this process's part of the backend's limits
	eff      int           // concurrency after the share
	ad       *aimd         // the adaptive limit; nil unless adaptive
	held     []time.Time   // with adaptive: until when pushed-back attempts hold their slots
	changed  chan struct{} // closed and replaced on every change
	brk      breaker
	now      func() time.Time
}

// Settings are a limiter's tunables.
type Settings struct {
	Rate        float64
	Burst       int
	Concurrency int // with Adaptive, the ceiling of the limit found
	Adaptive    bool
	Paused      bool
}

// NewLimiter builds a limiter; failures 0 turns the breaker off.
func NewLimiter(s Settings, failures int, cooldown time.Duration) *Limiter {
	l := &Limiter{tb: rate.NewLimiter(rate.Inf, 1), changed: make(chan struct{}),
		brk: newBreaker(failures, cooldown), now: time.Now, share: 1}
	l.Set(s)
	return l
}

// SetProbes sets the attempts the breaker lets through half-open (at
// least 1; 1 until set).
func (l *Limiter) SetProbes(n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.brk.probes = max(1, n)
	l.signal()
}

// Set replaces the settings and wakes every waiter. Turning Adaptive on
// starts the limit again from 1 (in slow start); turning it off goes back
// to Concurrency.
func (l *Limiter) Set(s Settings) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rate, l.burst, l.limit, l.paused = s.Rate, max(1, s.Burst), max(1, s.Concurrency), s.Paused
	switch {
	case !s.Adaptive:
		l.ad, l.held = nil, nil
	case l.ad == nil:
		l.ad = newAIMD(l.limit, l.now())
	}
	l.apply()
}

// SetShare sets the fraction (0..1] of the backend's rate and concurrency
// this process may use, when several processes deliver to it.
func (l *Limiter) SetShare(f float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if f <= 0 || f > 1 {
		f = 1
	}
	if f == l.share {
		return
	}
	l.share = f
	l.apply()
}

// apply derives the enforced limits from the settings and the share.
func (l *Limiter) apply() {
	lim := rate.Limit(l.rate * l.share)
	if l.rate <= 0 {
		lim = rate.Inf
	}
	now := l.now()
	l.tb.SetLimitAt(now, lim)
	l.tb.SetBurstAt(now, max(1, int(math.Round(float64(l.burst)*l.share))))
	l.eff = max(1, int(math.Round(float64(l.limit)*l.share)))
	if l.ad != nil {
		l.ad.setCeiling(l.eff)
	}
	l.signal()
}

// capacity is the limit on deliveries in flight now.
func (l *Limiter) capacity() int {
	if l.ad != nil {
		return min(l.eff, l.ad.limit)
	}
	return l.eff
}

func (l *Limiter) signal() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// WaitUnpaused returns once the limiter is not paused, or ctx ends.
func (l *Limiter) WaitUnpaused(ctx context.Context) error {
	for {
		l.mu.Lock()
		paused, changed := l.paused, l.changed
		l.mu.Unlock()
		if !paused {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

// Settings returns the current settings.
func (l *Limiter) Settings() Settings {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Settings{Rate: l.rate, Burst: l.burst, Concurrency: l.limit, Adaptive: l.ad != nil, Paused: l.paused}
}

// State describes the limiter right now.
type State struct {
	InFlight int
	// Limit is the cap on deliveries in flight in this process now:
	// Concurrency after the share, or below it the adaptive limit.
	Limit   int
	Breaker string  // closed | open | half_open
	Share   float64 // this process's part of the backend's limits
}

// State reports deliveries in flight, the current limit and the breaker's
// state.
func (l *Limiter) State() State {
	l.mu.Lock()
	defer l.mu.Unlock()
	return State{InFlight: l.inflight, Limit: l.capacity(), Breaker: l.brk.state(l.now()), Share: l.share}
}

// Permit is one admitted delivery. Begin marks the start of its delivery;
// Done (or Release, or Cancel if the delivery never started) must be
// called once.
type Permit struct {
	l     *Limiter
	probe bool
	epoch int // the breaker's, for a probe
	r     *rate.Reservation
	begun bool
	at    time.Time // when the delivery began
}

// TryAcquire admits a delivery only if one may start right now; otherwise
// it returns nil and changes nothing.
func (l *Limiter) TryAcquire() *Permit {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if busy, _ := l.busy(now); l.paused || busy >= l.capacity() {
		return nil
	}
	ok, probe, _ := l.brk.admit(now)
	if !ok {
		return nil
	}
	r := l.tb.ReserveN(now, 1)
	if !r.OK() || r.DelayFrom(now) > 0 {
		r.CancelAt(now)
		return nil
	}
	l.inflight++
	return &Permit{l: l, probe: probe, epoch: l.brk.take(probe), r: r, at: now}
}

// Begin marks the permit as used: its delivery starts now. The adaptive
// limit counts only begun permits as deliveries in flight (a dispatcher
// holding permits while it waits for messages uses nothing), and times the
// attempt from here to Done.
func (p *Permit) Begin() {
	l := p.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if p.begun {
		return
	}
	p.begun, p.at = true, l.now()
	l.used++
	if l.ad != nil && l.ad.begin(l.used, p.at) {
		l.signal()
	}
}

// Cancel gives back a permit that was not used: its slot and its token.
func (p *Permit) Cancel() {
	l := p.release()
	defer l.mu.Unlock()
	if p.r != nil {
		p.r.CancelAt(l.now())
	}
	l.brk.neutral(p.probe, p.epoch)
	l.signal()
}

// release frees the permit's slot and returns its limiter, still locked.
func (p *Permit) release() *Limiter {
	l := p.l
	l.mu.Lock()
	l.inflight--
	if p.begun {
		l.used--
	}
	return l
}

// ErrPaused is AcquireUnpaused's answer while the backend is paused.
var ErrPaused = errors.New("backend paused")

// Acquire waits until a delivery may start: not paused, a free slot, the
// breaker closed (or this is its half-open probe) and a token.
func (l *Limiter) Acquire(ctx context.Context) (*Permit, error) { return l.acquire(ctx, false) }

// AcquireUnpaused is Acquire, but returns ErrPaused at once, and as soon
// as, the backend is paused.
func (l *Limiter) AcquireUnpaused(ctx context.Context) (*Permit, error) { return l.acquire(ctx, true) }

func (l *Limiter) acquire(ctx context.Context, stopOnPause bool) (*Permit, error) {
	for {
		l.mu.Lock()
		changed := l.changed
		now := l.now()
		var wait time.Duration // 0: until something changes
		if l.paused && stopOnPause {
			l.mu.Unlock()
			return nil, ErrPaused
		}
		busy, freeIn := l.busy(now)
		var ok, probe bool
		switch {
		case l.paused:
		case busy >= l.capacity():
			wait = freeIn // when a held slot frees, if one does
		default:
			if ok, probe, wait = l.brk.admit(now); !ok {
				break
			}
			r := l.tb.ReserveN(now, 1)
			d := r.DelayFrom(now)
			if d > maxTokenWait {
				r.CancelAt(now)
				wait = maxTokenWait
				break
			}
			p := &Permit{l: l, probe: probe, epoch: l.brk.take(probe), r: r, at: now}
			l.inflight++
			l.mu.Unlock()
			if d > 0 {
				t := time.NewTimer(d)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					p.Cancel()
					return nil, ctx.Err()
				}
			}
			return p, nil
		}
		l.mu.Unlock()
		var timer *time.Timer
		var fire <-chan time.Time
		if wait > 0 {
			timer = time.NewTimer(wait)
			fire = timer.C
		}
		select {
		case <-ctx.Done():
		case <-changed:
		case <-fire:
		}
		if timer != nil {
			timer.Stop()
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
}

// Done frees the permit's slot. healthy says whether the backend answered
// (any status that is not retried counts); unhealthy attempts feed the
// breaker and are back pressure to the adaptive limit.
func (p *Permit) Done(healthy bool) {
	l := p.release()
	defer l.mu.Unlock()
	now := l.now()
	l.brk.done(p.probe, p.epoch, healthy, now)
	if l.ad != nil && p.begun {
		before := l.ad.limit
		l.ad.sample(now.Sub(p.at), !healthy, now)
		// A pushed-back attempt that did not lower the limit (it was
		// lowered less than a window ago) keeps its slot for the rest of
		// its round trip: a 429 comes back at once, and its slot handed on
		// at once would draw the next 429 at once, many times over until
		// the limit comes down again. A decrease frees the slots held.
		switch until := p.at.Add(l.ad.window()); {
		case l.ad.limit < before:
			l.held = l.held[:0]
		case !healthy && until.After(now):
			l.held = append(l.held, until)
		}
	}
	l.signal()
}

// busy is the slots taken at now: permits out, and the slots pushed-back
// attempts still hold; freeIn is when the first of those frees (0: none).
func (l *Limiter) busy(now time.Time) (busy int, freeIn time.Duration) {
	keep := l.held[:0]
	for _, until := range l.held {
		if d := until.Sub(now); d > 0 {
			keep = append(keep, until)
			if freeIn == 0 || d < freeIn {
				freeIn = d
			}
		}
	}
	l.held = keep
	return l.inflight + len(keep), freeIn
}

// Release frees the permit's slot without a verdict on the backend: the
// attempt never reached it (sluice could not build the request, or a
// shutdown cut it short). The breaker neither opens nor closes for it, a
// probe's place is given back, and the adaptive limit learns nothing.
func (p *Permit) Release() {
	l := p.release()
	defer l.mu.Unlock()
	l.brk.neutral(p.probe, p.epoch)
	l.signal()
}

// Backoff returns the wait before the attempt after attempt (1-based): a
// random duration between initial and min(max, initial·2^(attempt-1)) —
// exponential growth with full jitter above the floor.
func Backoff(attempt int, initial, maxWait time.Duration, rnd func(int64) int64) time.Duration {
	ceil := float64(initial) * math.Pow(2, float64(attempt-1))
	if ceil > float64(maxWait) || math.IsInf(ceil, 0) {
		ceil = float64(maxWait)
	}
	span := int64(ceil) - int64(initial)
	if span <= 0 {
		return initial
	}
	return initial + time.Duration(rnd(span+1))
}
