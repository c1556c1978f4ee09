package workers

import "time"

// breaker is a consecutive-failure circuit breaker with half-open probes.
// Closed, every attempt passes. After threshold consecutive failed attempts
// it opens: nothing passes for the cooldown. Then it is half-open: up to
// probes attempts pass, and the first outcome decides — a success closes
// it, a failure opens it for another cooldown. So a backend that stays down
// gets at most probes attempts per cooldown. The Limiter holds it under its
// lock; it is not safe for concurrent use on its own.
type breaker struct {
	threshold int // consecutive failures that open it; 0 = off
	cooldown  time.Duration
	probes    int // attempts let through half-open; at least 1

	fails  int
	open   bool
	until  time.Time // end of the cooldown
	epoch  int       // counts openings, so a late outcome of an old probe is told apart
	probed int       // probes let through since this cooldown ended
}

func newBreaker(threshold int, cooldown time.Duration) breaker {
	return breaker{threshold: threshold, cooldown: cooldown, probes: 1}
}

// admit says whether an attempt may start at now and whether it is a probe.
// When it may not, wait > 0 is how long until it may; wait 0 means until a
// probe under way settles.
func (b *breaker) admit(now time.Time) (ok, probe bool, wait time.Duration) {
	switch {
	case !b.open:
		return true, false, 0
	case now.Before(b.until):
		return false, false, b.until.Sub(now)
	case b.probed >= b.probes:
		return false, false, 0
	}
	return true, true, 0
}

// take counts an admitted attempt; it returns the epoch the attempt's
// outcome refers to.
func (b *breaker) take(probe bool) int {
	if probe {
		b.probed++
	}
	return b.epoch
}

// done takes an attempt's outcome. healthy: the backend answered with a
// status that is not retried.
func (b *breaker) done(probe bool, epoch int, healthy bool, now time.Time) {
	if healthy {
		b.fails, b.open, b.probed = 0, false, 0
		return
	}
	b.fails++
	switch {
	case b.threshold <= 0:
	case probe && b.open && epoch == b.epoch:
		// The backend is still down: another cooldown. Probes of this
		// opening still out count as plain failures when they come back.
		b.trip(now)
	case !b.open && b.fails >= b.threshold:
		b.trip(now)
	}
}

func (b *breaker) trip(now time.Time) {
	b.open, b.until, b.probed = true, now.Add(b.cooldown), 0
	b.epoch++
}

// neutral gives back the place of a probe that never reached the backend.
func (b *breaker) neutral(probe bool, epoch int) {
	if probe && b.open && epoch == b.epoch && b.probed > 0 {
		b.probed--
	}
}

// state is closed, open or half_open.
func (b *breaker) state(now time.Time) string {
	switch {
	case !b.open:
		return "closed"
	case now.Before(b.until):
		return "open"
	}
	return "half_open"
}
