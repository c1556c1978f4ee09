package workers

import "time"

// The adaptive limit's parameters (README "Adaptive concurrency"). They
// are fixed: the algorithm is meant to need no tuning.
const (
	// adaptiveDecrease is the multiplicative decrease: on back pressure or
	// rising latency the limit becomes 0.9 of itself (at least 1 less).
	// Vector's ARC and Netflix's AIMDLimit use 0.9 too; 0.5 (TCP's) wastes
	// a quarter of a backend that answers 429 just past its capacity.
	adaptiveDecrease = 0.9
	// adaptiveTolerance: latency is rising when a window's mean RTT is
	// above this many times the base RTT (Netflix Gradient2's default).
	adaptiveTolerance = 1.5
	// adaptiveMinSamples are the attempts a window needs before its
	// latency says anything; back pressure needs only one.
	adaptiveMinSamples = 3
	// adaptiveClip caps each RTT sample at this many times the base RTT
	// before it counts towards a window's latency, so one stray slow
	// answer among many does not read as rising latency.
	adaptiveClip = 3.0
	// adaptiveRebase: after this many windows in a row of rising latency
	// (and as many decreases) that did not bring it down by a tenth, the
	// latency is taken as the backend's new normal: it does not come from
	// sluice's load.
	adaptiveRebase = 3
	// adaptiveMinWindow and adaptiveMaxWindow bound a window, which is one
	// smoothed RTT.
	adaptiveMinWindow = 50 * time.Millisecond
	adaptiveMaxWindow = 10 * time.Second
	// adaptiveRTTAlpha weighs a window's mean RTT into the smoothed RTT.
	adaptiveRTTAlpha = 0.4
	// The base RTT follows lower latency fast and higher latency slowly,
	// so a queue building up at the backend shows against it.
	adaptiveBaseDown  = 0.5
	adaptiveBaseUp    = 0.05
	adaptiveBaseDrift = 1.1 // the most above the base that still moves it up
)

// aimd finds the concurrency a backend takes: additive increase,
// multiplicative decrease, judged once per window of one smoothed round
// trip, as TCP congestion control, Vector's Adaptive Request Concurrency
// and Netflix's concurrency-limits do. Every change of the limit starts a
// new generation: only attempts begun since then tell about the new limit,
// so answers still coming back for the old one neither raise nor lower it
// again (the answers of one round trip all tell of the same overload).
//
//   - Increase: a window that closes with the limit reached (deliveries
//     in flight were at the limit at some point: the limit is what held
//     them back), no back pressure and the latency of this generation's
//     attempts not rising raises the limit by one — doubling instead while
//     in slow start, which lasts from the start until the first decrease.
//   - Decrease on back pressure (a retried status such as 429 or 503, a
//     timeout, a network error) of an attempt of this generation: at once,
//     but at most once per window. The limit becomes 0.9 of itself, at
//     least 1 less. In slow start it halves (the last doubling overshot).
//   - Decrease on rising latency (this generation's mean RTT in a window,
//     of at least 3 answers, above 1.5 times the base RTT): 0.9 of itself,
//     at the window's close. When 3 such decreases in a row did not bring
//     the latency down by a tenth, it is not sluice's load: the latency
//     becomes the new base.
//
// It is driven by the Limiter under its lock, with times passed in, and is
// not safe for concurrent use on its own.
type aimd struct {
	limit     int
	ceiling   int
	slowStart bool
	gen       time.Time // when the limit last changed

	srtt float64 // smoothed RTT in seconds: the window's length; 0 = none yet
	base float64 // RTT without queueing, in seconds

	// The open window.
	start        time.Time
	n            int     // healthy attempts finished in it
	sum          float64 // their RTTs, seconds
	fresh        int     // those of them begun in this generation
	freshSum     float64 // their RTTs
	clipped      float64 // their RTTs capped at adaptiveClip·base
	backpressure bool
	reached      bool

	lastCut    time.Time
	rising     int     // windows in a row with rising latency
	risingFrom float64 // the first one's latency
}

// newAIMD starts at 1, in slow start.
func newAIMD(ceiling int, now time.Time) *aimd {
	return &aimd{limit: 1, ceiling: max(1, ceiling), slowStart: true, start: now, gen: now}
}

// setCeiling changes the limit's upper bound (concurrency, after the
// process's share).
func (a *aimd) setCeiling(c int) {
	a.ceiling = max(1, c)
	a.limit = min(a.limit, a.ceiling)
}

func (a *aimd) window() time.Duration {
	w := time.Duration(a.srtt * float64(time.Second))
	return min(max(w, adaptiveMinWindow), adaptiveMaxWindow)
}

// begin notes that a delivery started with used deliveries under way (it
// included); it reports whether the limit changed.
func (a *aimd) begin(used int, now time.Time) bool {
	changed := a.tick(now)
	if used >= a.limit {
		a.reached = true
	}
	return changed
}

// sample takes a finished attempt: its RTT, and whether the backend pushed
// back. It reports whether the limit changed.
func (a *aimd) sample(rtt time.Duration, backpressure bool, now time.Time) bool {
	changed := a.tick(now)
	fresh := !now.Add(-rtt).Before(a.gen)
	if backpressure {
		a.backpressure = true
		return fresh && a.cut(now) || changed
	}
	s := rtt.Seconds()
	a.n++
	a.sum += s
	if fresh {
		a.fresh++
		a.freshSum += s
		if a.base > 0 {
			s = min(s, adaptiveClip*a.base)
		}
		a.clipped += s
	}
	return changed
}

// tick closes the window once it is one smoothed RTT old and holds
// answers to attempts of this generation (enough to judge latency by, or
// one per slot at a small limit) — or, without them, once it is three
// windows old — and judges it.
func (a *aimd) tick(now time.Time) bool {
	el, w := now.Sub(a.start), a.window()
	if el < w || a.fresh < min(adaptiveMinSamples, a.limit) && el < 3*w {
		return false
	}
	old := a.limit
	if a.n > 0 {
		mean := a.sum / float64(a.n)
		if a.srtt == 0 {
			a.srtt, a.base = mean, mean
		} else {
			a.srtt += adaptiveRTTAlpha * (mean - a.srtt)
		}
	}
	if a.fresh > 0 {
		fresh, judged := a.freshSum/float64(a.fresh), a.clipped/float64(a.fresh)
		known := a.fresh >= adaptiveMinSamples // enough answers to judge latency by
		switch {
		case known && judged > adaptiveTolerance*a.base:
			a.rising++
			if a.rising == 1 {
				a.risingFrom = fresh
			}
			if a.rising > adaptiveRebase && fresh >= 0.9*a.risingFrom {
				// Lowering the limit did not bring the latency down: it
				// does not come from sluice's load.
				a.base, a.rising = fresh, 0
			} else if !a.backpressure {
				a.cut(now)
			}
		default:
			if known {
				a.rising = 0
				switch {
				case judged < a.base:
					a.base += adaptiveBaseDown * (judged - a.base)
				case judged <= adaptiveBaseDrift*a.base:
					// Only near the base: a queue building up at the
					// backend, below the tolerance, must not carry the
					// base up with it (Gradient2's drift); a lasting
					// change is taken by the rebase above.
					a.base += adaptiveBaseUp * (judged - a.base)
				}
			}
			if a.reached && !a.backpressure && a.limit < a.ceiling {
				if a.slowStart {
					a.limit = min(a.ceiling, 2*a.limit)
				} else {
					a.limit++
				}
				a.gen = now
			}
		}
	}
	a.start, a.n, a.sum, a.fresh, a.freshSum, a.clipped = now, 0, 0, 0, 0, 0
	a.backpressure, a.reached = false, false
	return a.limit != old
}

// cut lowers the limit, at most once per window, on back pressure or
// rising latency; it reports whether the limit changed.
func (a *aimd) cut(now time.Time) bool {
	if !a.lastCut.IsZero() && now.Sub(a.lastCut) < a.window() {
		return false
	}
	a.lastCut, a.gen = now, now
	old := a.limit
	next := min(old-1, int(float64(old)*adaptiveDecrease))
	if a.slowStart {
		next = old / 2
		a.slowStart = false
	}
	a.limit = max(1, next)
	return a.limit != old
}
