package backlog

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-gw/sluice/broker"
)

// Monitor keeps a recent view of topics' backlogs and drain rates by polling
// Stats, so that hot paths (ingress answering Retry-After, admission against
// max_backlog) never ask the broker themselves.
//
// The drain rate is what the topic's consumers take when they have work:
// measured only over polls that found a backlog. A poll whose backlog
// stayed the whole interval measures capacity (smoothed in); one in which
// the backlog ran out only shows the capacity is at least that (the rate
// may rise, never fall, on it); an idle poll says nothing and leaves the
// rate as it was — so a short idle does not make the next estimate absurd.
type Monitor struct {
	b        Stater
	interval time.Duration
	now      func() time.Time
	mu       sync.RWMutex
	topics   map[string]*topicView
	drained  func(topic string) (perSecond float64, ok bool) // DrainFrom; nil: the broker's figures alone
}

type topicView struct {
	added     atomic.Int64  // requests published through Add since the last poll
	perMsg    atomic.Uint64 // requests per message (float64 bits), learned by Packed; 0 = 1
	depth     int64         // messages
	consumed  int64
	drain     float64   // messages per second while there is work; 0 = not measured yet
	stalled   time.Time // since when a backlog has not moved; zero while it moves
	polledAt  time.Time
	available bool
}

// StallAfter is how long a backlog must stand still before its topic counts
// as stalled (paused, breaker open, backend down).
const StallAfter = 2 * time.Second

// StalledExtra is added to the estimate of a stalled topic: when it moves
// again is unknown, so a poll is due no sooner than this.
const StalledExtra = time.Minute

// Stater reports a topic's backlog: what the Monitor asks a broker
// (broker.Broker satisfies it).
type Stater interface {
	Stats(ctx context.Context, topic string) (broker.QueueStats, error)
}

// New watches topics of b, polling every interval once Run runs. It starts
// nothing and asks b nothing: until the first Poll, every estimate is empty.
func New(b Stater, topics []string, interval time.Duration) *Monitor {
	m := &Monitor{b: b, interval: interval, now: time.Now, topics: map[string]*topicView{}}
	for _, t := range topics {
		m.topics[t] = &topicView{}
	}
	return m
}

// DrainFrom makes the monitor count, besides the broker's figures, what
// every worker process together takes off a topic, as src reports it:
// requests per second, false while it knows nothing (cluster.Node's
// DrainPerSecond). On RabbitMQ, whose consumed count is this process's own
// acknowledgements, that is what makes the drain rate (and Retry-After and
// backlog_seconds) the whole deployment's. Call it before Run.
func (m *Monitor) DrainFrom(src func(topic string) (perSecond float64, ok bool)) { m.drained = src }

// Run polls at once, then every interval, until ctx ends. It always
// returns nil: a poll that fails marks its topic unavailable until one
// succeeds.
func (m *Monitor) Run(ctx context.Context) error {
	t := time.NewTicker(m.interval)
	defer t.Stop()
	for {
		m.Poll(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Poll refreshes every topic once, synchronously: callers that must not
// start with empty estimates poll once before they start Run.
func (m *Monitor) Poll(ctx context.Context) {
	for topic, v := range m.topics {
		added := v.added.Swap(0)
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := m.b.Stats(qctx, topic)
		cancel()
		// Publishes while Stats ran may or may not be in st.Depth. Counted
		// as added they would read as drained, once in depth: a paused
		// backend measured a drain of 2/s from one such publish. They are
		// taken as in the depth; if they were not, the next poll sees them
		// there and the drain reads low, never high.
		during := v.added.Swap(0)
		var others float64 // requests per second all workers took, if known
		if m.drained != nil {
			if r, ok := m.drained(topic); ok {
				others = r
			}
		}
		now := m.now()
		m.mu.Lock()
		if err != nil {
			v.available = false
			v.added.Add(added + during) // still unseen by any poll
		} else {
			if v.available && !v.polledAt.IsZero() {
				v.measure(st, added, others, now)
			}
			v.depth, v.consumed, v.polledAt, v.available = st.Depth, st.Consumed, now, true
		}
		m.mu.Unlock()
	}
}

// measure updates the drain rate and the stall from one poll interval in
// which this process added added requests and all workers together took
// requests per second (0: unknown). What was taken is the largest of three
// readings: the consumed count (exact where the broker counts for the
// whole topic; on RabbitMQ only this process's acknowledgements), the
// depth that went away (what a RabbitMQ ingress sees, while nothing else
// is published), and the workers' own figures (DrainFrom).
func (v *topicView) measure(st broker.QueueStats, added int64, requests float64, now time.Time) {
	dt := now.Sub(v.polledAt).Seconds()
	msgs := int64(math.Round(float64(added) / v.ratio())) // what the broker counts
	done := max(0, st.Consumed-v.consumed, v.depth+msgs-st.Depth, int64(math.Round(requests*dt/v.ratio())))
	rate := float64(done) / dt
	switch {
	case v.depth > 0 && st.Depth > 0 && done > 0: // worked the whole interval: capacity
		if v.drain == 0 {
			v.drain = rate
		} else {
			v.drain = 0.6*v.drain + 0.4*rate
		}
	case done > 0: // ran out of work: at least this
		v.drain = math.Max(v.drain, rate)
	}
	switch {
	case done > 0 || st.Depth == 0:
		v.stalled = time.Time{}
	case v.stalled.IsZero(): // a backlog, and nothing taken
		v.stalled = v.polledAt
	}
}

// Packed learns that one message just written to or fetched from topic
// carries requests requests (group commit): a broker counts messages, and
// the estimates are in requests, so depths and drain rates are scaled by
// the recent average. It takes no lock: it runs for every write and fetch.
func (m *Monitor) Packed(topic string, requests int) {
	v := m.topics[topic]
	if v == nil || requests < 1 {
		return
	}
	for {
		old := v.perMsg.Load()
		next := 0.98*max(1, math.Float64frombits(old)) + 0.02*float64(requests)
		if v.perMsg.CompareAndSwap(old, math.Float64bits(next)) {
			return
		}
	}
}

// ratio is v's requests per message.
func (v *topicView) ratio() float64 {
	return max(1, math.Float64frombits(v.perMsg.Load()))
}

// Add counts n requests published to topic since the last poll, so Depth
// stays current between polls.
func (m *Monitor) Add(topic string, n int64) {
	if v := m.topics[topic]; v != nil {
		v.added.Add(n)
	}
}

// Estimate is a topic's backlog as a wait.
type Estimate struct {
	Depth   int64
	Drain   float64       // measured messages per second; 0 = not measured yet
	Wait    time.Duration // until one more message queued now is taken
	Stalled bool          // the backlog has not moved for StallAfter
}

// Estimate tells how long one more message queued on topic now waits: the
// backlog over the measured drain rate (never above rate, the configured
// one, when it is set: a rate lowered live takes effect at once), or while
// none is measured over rate, or with rate 0 (unlimited) over one message
// per slot and second. A stalled backlog waits that unmeasured estimate
// plus StalledExtra.
func (m *Monitor) Estimate(topic string, rate float64, slots int) Estimate {
	fallback := rate
	if fallback <= 0 {
		fallback = float64(slots)
	}
	v := m.topics[topic]
	if v == nil {
		return Estimate{}
	}
	m.mu.RLock()
	r := v.ratio()
	e := Estimate{Depth: int64(math.Round(float64(v.depth)*r)) + v.added.Load(), Drain: v.drain * r}
	stalled := !v.stalled.IsZero() && m.now().Sub(v.stalled) >= StallAfter
	m.mu.RUnlock()
	r = e.Drain
	if rate > 0 && r > rate {
		r = rate
	}
	if r <= 0 || stalled {
		r = fallback
	}
	if e.Depth > 0 && r > 0 {
		e.Wait = time.Duration(float64(e.Depth+1) / r * float64(time.Second))
	}
	if stalled && e.Depth > 0 {
		e.Stalled = true
		e.Wait += StalledExtra
	}
	return e
}
