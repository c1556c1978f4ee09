package workers

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/config"
	"github.com/sluice-gw/sluice/internal/wait"
	"github.com/sluice-gw/sluice/wire"
)

// clock is a fake clock for the limiter.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

// TestBreakerProbes: half-open, up to probes attempts pass (Acquire and
// TryAcquire alike), no more until one settles; a failed probe opens the
// breaker for another cooldown, and the other probes of that opening,
// failing later, do not extend it; a probe given back (never sent) frees
// its place; one success closes the breaker, even with probes still out.
func TestBreakerProbes(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	l := NewLimiter(Settings{Concurrency: 10}, 2, 5*time.Second)
	l.now = c.now
	l.SetProbes(3)
	ctx := context.Background()
	for range 2 {
		p, _ := l.Acquire(ctx)
		p.Done(false)
	}
	if s := l.State().Breaker; s != "open" {
		t.Fatalf("after 2 failures the breaker is %s", s)
	}
	if l.TryAcquire() != nil {
		t.Fatal("an open breaker admitted a delivery")
	}
	c.advance(5 * time.Second)
	if s := l.State().Breaker; s != "half_open" {
		t.Fatalf("after the cooldown the breaker is %s", s)
	}
	first, err := l.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	second, third := l.TryAcquire(), l.TryAcquire()
	if second == nil || third == nil {
		t.Fatal("half-open with probes 3: fewer than 3 probes admitted")
	}
	if l.TryAcquire() != nil {
		t.Fatal("a fourth probe admitted")
	}
	third.Release() // never reached the backend: its place is free again
	third = l.TryAcquire()
	if third == nil {
		t.Fatal("a probe given back did not free its place")
	}
	first.Done(false)
	if s := l.State().Breaker; s != "open" {
		t.Fatalf("after a failed probe the breaker is %s", s)
	}
	c.advance(4 * time.Second)
	second.Done(false) // a probe of the same opening: no extra cooldown
	c.advance(time.Second)
	if s := l.State().Breaker; s != "half_open" {
		t.Fatalf("one cooldown after the failed probe the breaker is %s", s)
	}
	probe := l.TryAcquire()
	if probe == nil {
		t.Fatal("no probe after the second cooldown")
	}
	third.Done(false) // an older opening's probe, failing late: no new opening
	if s := l.State().Breaker; s != "half_open" {
		t.Fatalf("a late failure of an older probe: breaker %s, want half_open", s)
	}
	probe.Done(true)
	if s := l.State().Breaker; s != "closed" {
		t.Fatalf("after a good probe the breaker is %s", s)
	}
	var held []*Permit
	for p := l.TryAcquire(); p != nil; p = l.TryAcquire() {
		held = append(held, p)
	}
	if len(held) != 10 {
		t.Fatalf("closed breaker: %d deliveries admitted, want 10", len(held))
	}
}

// endless hands out a new request every time it is asked, forever.
type endless struct {
	mu  sync.Mutex
	n   int
	log *actionLog
}

func (s *endless) Fetch(ctx context.Context, max int) ([]broker.Delivery, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]broker.Delivery, max)
	for i := range out {
		s.n++
		out[i] = &fakeDelivery{msg: wire.EncodeRequest(request(fmt.Sprint("r", s.n))), log: s.log}
	}
	return out, nil
}

func (s *endless) Close() error { return nil }

// TestBreakerProbesAgainstADeadBackend: a backend that answers every
// attempt with 503 gets, once the breaker opened, no more than probes
// attempts per cooldown — and gets them: half-open lets all of them
// through, every cooldown.
func TestBreakerProbesAgainstADeadBackend(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var hits []time.Time
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		hits = append(hits, time.Now())
		mu.Unlock()
		w.WriteHeader(503)
	}))
	defer srv.Close()
	b := testBackend(`"` + srv.URL + `"`)
	b.Concurrency = 16
	*b.Breaker.Failures, b.Breaker.Cooldown, b.Breaker.Probes = 4, config.Duration(300*time.Millisecond), 3
	sub := &endless{log: &actionLog{}}
	br := &fakeBroker{subscribe: func() (broker.Subscription, error) { return sub, nil }}
	p := newTestPool(b, br)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var opened atomic.Pointer[time.Time]
	wait.For(t, 5*time.Second, "the breaker open", func() bool {
		if p.lim.State().Breaker == "open" {
			now := time.Now()
			opened.Store(&now)
			return true
		}
		return false
	})
	time.Sleep(5*300*time.Millisecond + 150*time.Millisecond) // five cooldowns and a half
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	// Attempts let through before the breaker opened may reach the backend
	// a little after it did (16 at once); the first probes come a cooldown
	// later.
	var after []time.Time
	for _, h := range hits {
		if h.After(opened.Load().Add(150 * time.Millisecond)) {
			after = append(after, h)
		}
	}
	slices.SortFunc(after, func(a, b time.Time) int { return a.Compare(b) })
	// Within any span shorter than a cooldown, at most 3 attempts.
	for i := range after {
		n := 0
		for _, h := range after[i:] {
			if h.Sub(after[i]) < 290*time.Millisecond {
				n++
			}
		}
		if n > 3 {
			t.Fatalf("%d attempts within one cooldown after the breaker opened (probes 3): %v", n, after)
		}
	}
	if len(after) < 4*3 || len(after) > 5*3 {
		t.Fatalf("%d attempts over five cooldowns with probes 3, want 12 to 15: %v", len(after), after)
	}
	t.Logf("%d attempts as the breaker opened (16 at once), %d over the five cooldowns after", len(hits)-len(after), len(after))
}
