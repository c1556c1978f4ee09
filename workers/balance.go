package workers

import (
	"math"
	"sync"
	"time"
)

// Outlier detection, as a gateway's passive health checks do it: a url that
// fails at the connection level (refused, timeout, reset, dns, tls) leaves
// the rotation at once, one that answers a run of retryable 5xx statuses
// after ejectAfter5xx of them. It stays out for an interval that doubles
// with each ejection in a row (ejectBase up to ejectMax), then gets one
// probe attempt: a success puts it back, a failure ejects it again.
const (
	ejectAfter5xx = 5
	ejectBase     = time.Second
	ejectMax      = time.Minute
)

type endpoint struct {
	fails5xx  int       // retryable 5xx answers in a row
	ejections int       // ejections in a row (probes that failed)
	until     time.Time // out of the rotation until then; zero: in it
	probing   bool      // its probe attempt is under way
}

// balancer spreads attempts over a backend's urls, round robin among the
// healthy ones, and keeps a retry off the url its previous attempt failed
// on. It is safe for concurrent use.
type balancer struct {
	mu   sync.Mutex
	eps  []*endpoint
	next int
	now  func() time.Time
}

// newBalancer spreads attempts over n urls, by index.
func newBalancer(n int) *balancer {
	b := &balancer{now: time.Now, eps: make([]*endpoint, n)}
	for i := range b.eps {
		b.eps[i] = &endpoint{}
	}
	return b
}

// pick returns the url for an attempt: a url whose ejection ran out (as its
// probe), else the next healthy one in turn that is not avoid (the index of
// the url the previous attempt failed on, or -1), else the healthy avoid,
// else the one that comes back soonest. probe reports a probe pick, which
// report must be told about.
func (b *balancer) pick(avoid int) (i int, probe bool) {
	if len(b.eps) == 1 {
		return 0, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	n := len(b.eps)
	start := b.next
	b.next = (b.next + 1) % n
	choose := func(ok func(*endpoint) bool) int {
		for k := range n {
			j := (start + k) % n
			if j != avoid && ok(b.eps[j]) {
				return j
			}
		}
		if avoid >= 0 && avoid < n && ok(b.eps[avoid]) {
			return avoid
		}
		return -1
	}
	due := func(e *endpoint) bool { return !e.until.IsZero() && !e.probing && !now.Before(e.until) }
	// A url whose ejection ran out gets the next attempt as its probe.
	for k := range n {
		if j := (start + k) % n; j != avoid && due(b.eps[j]) {
			b.eps[j].probing = true
			return j, true
		}
	}
	if j := choose(func(e *endpoint) bool { return e.until.IsZero() }); j >= 0 {
		return j, false
	}
	if j := choose(due); j >= 0 {
		b.eps[j].probing = true
		return j, true
	}
	// Every url is out: deliver anyway (the breaker guards the backend as
	// a whole) to the one that comes back soonest.
	best := 0
	for j, e := range b.eps {
		if e.until.Before(b.eps[best].until) {
			best = j
		}
	}
	return best, false
}

// report records the outcome of an attempt on url i.
func (b *balancer) report(i int, probe bool, o outcome) {
	if len(b.eps) == 1 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.eps[i]
	if probe {
		e.probing = false
	}
	switch o {
	case outcomeNeutral:
		return
	case outcomeOK:
		e.fails5xx, e.ejections, e.until = 0, 0, time.Time{}
		return
	case outcome5xx:
		e.fails5xx++
		if e.fails5xx < ejectAfter5xx && !probe {
			return
		}
	}
	if !e.until.IsZero() && !probe && b.now().Before(e.until) {
		return // out already: attempts picked before the ejection report back
	}
	e.fails5xx = 0
	e.ejections++
	wait := time.Duration(float64(ejectBase) * math.Pow(2, float64(e.ejections-1)))
	e.until = b.now().Add(min(wait, ejectMax))
}

// outcome is what an attempt says about the url it went to.
type outcome int

const (
	outcomeOK          outcome = iota // an answer that is not a retryable 5xx
	outcome5xx                        // a retryable 5xx
	outcomeConnFailure                // no answer: refused, timeout, reset, dns, tls
	outcomeNeutral                    // nothing about the url (sluice's own failure, shutdown)
)
