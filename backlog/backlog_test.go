package backlog

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/broker"
)

// fakeStats is a topic whose backlog a test moves by hand.
type fakeStats struct {
	mu sync.Mutex
	st broker.QueueStats
}

func (f *fakeStats) Stats(context.Context, string) (broker.QueueStats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st, nil
}

// queue adds n messages; take consumes n.
func (f *fakeStats) queue(n int64) { f.mu.Lock(); f.st.Depth += n; f.mu.Unlock() }
func (f *fakeStats) take(n int64) {
	f.mu.Lock()
	f.st.Depth -= n
	f.st.Consumed += n
	f.mu.Unlock()
}

// racingStats is a topic to which a publish lands while Stats runs: the
// snapshot may already hold it.
type racingStats struct {
	fakeStats
	m *Monitor
}

func (r *racingStats) Stats(ctx context.Context, topic string) (broker.QueueStats, error) {
	r.queue(1)
	r.m.Add(topic, 1) // the ingress counts its publish after the broker took it
	return r.fakeStats.Stats(ctx, topic)
}

// TestPublishDuringStatsIsNoDrain: a paused backend drains nothing, however
// the publishes fall against the polls. A publish counted both in the
// snapshot and as added read as drained: Retry-After 26 s for a backlog of
// 50 at rate 10.
func TestPublishDuringStatsIsNoDrain(t *testing.T) {
	r := &racingStats{}
	r.m = New(r, []string{"t"}, 500*time.Millisecond)
	now := time.Unix(1000, 0)
	r.m.now = func() time.Time { return now }
	for range 10 {
		r.m.Poll(context.Background())
		now = now.Add(500 * time.Millisecond)
	}
	e := r.m.Estimate("t", 10, 16)
	if e.Drain != 0 || e.Depth != 10 {
		t.Fatalf("nothing consumed, 10 published: drain %.1f/s, depth %d; want 0 and 10", e.Drain, e.Depth)
	}
}

// monitorAt is a monitor on a fake topic and clock; tick advances the clock
// by half a second and polls.
func monitorAt() (*Monitor, *fakeStats, func()) {
	f := &fakeStats{}
	m := New(f, []string{"t"}, 500*time.Millisecond)
	now := time.Unix(1000, 0)
	m.now = func() time.Time { return now }
	m.Poll(context.Background())
	return m, f, func() {
		now = now.Add(500 * time.Millisecond)
		m.Poll(context.Background())
	}
}

func secs(e Estimate) float64 { return e.Wait.Seconds() }

// TestEstimateAfterIdle is the make-run report: POST 5, wait 20 s, POST 10
// answered Retry-After: 86400, the drain rate having decayed towards 0 over
// the idle polls. Idle polls say nothing about the drain rate.
func TestEstimateAfterIdle(t *testing.T) {
	m, f, tick := monitorAt()
	f.queue(5)
	tick()
	f.take(5) // the backend took them within the next half second
	tick()
	for range 40 { // 20 s idle
		tick()
	}
	f.queue(10)
	m.Add("t", 0)
	e := m.Estimate("t", 20, 8)
	if e.Drain < 5 || secs(e) > 3 || e.Stalled {
		t.Fatalf("after idle: %+v (%.1f s), want the measured rate kept and about 1 s", e, secs(e))
	}
}

// TestEstimateAfterBurst: before anything was measured, the configured rate
// stands in; then what the consumers really take.
func TestEstimateAfterBurst(t *testing.T) {
	m, f, tick := monitorAt()
	f.queue(100)
	tick()
	if e := m.Estimate("t", 20, 8); secs(e) < 5 || secs(e) > 5.1 {
		t.Fatalf("burst of 100 at rate 20, nothing measured: %.2f s, want about 5", secs(e))
	}
	for range 4 { // a slow backend: 2 per second
		f.take(1)
		tick()
	}
	if e := m.Estimate("t", 20, 8); e.Drain < 1.9 || e.Drain > 2.1 || secs(e) < 45 {
		t.Fatalf("backlog of 96 draining at 2/s: %+v (%.1f s), want about 48 s", e, secs(e))
	}
	// A rate lowered live below what was measured counts at once.
	if e := m.Estimate("t", 1, 8); secs(e) < 96 || secs(e) > 98 {
		t.Fatalf("96 waiting, drain 2/s measured, rate lowered to 1: %.1f s, want 97", secs(e))
	}
}

// TestEstimatePaused: a backlog that stands still (paused, breaker open,
// backend down) is stalled: the configured rate's estimate plus a minute,
// not a day.
func TestEstimatePaused(t *testing.T) {
	m, f, tick := monitorAt()
	f.queue(50)
	tick()
	f.take(10)
	tick()
	for range 6 { // paused for 3 s
		tick()
	}
	e := m.Estimate("t", 10, 8)
	if !e.Stalled || secs(e) < 60 || secs(e) > 66 {
		t.Fatalf("paused with 40 waiting at rate 10: %+v (%.1f s), want stalled and 4 s + 60 s", e, secs(e))
	}
	f.take(5) // resumed
	tick()
	if e := m.Estimate("t", 10, 8); e.Stalled || secs(e) > 30 {
		t.Fatalf("after resuming: %+v", e)
	}
}

// TestEstimateUnlimitedRate: rate 0 (unlimited) with nothing measured falls
// back to the caller's figure (ingress passes the concurrency, one request
// per slot and second); an empty topic waits nothing.
func TestEstimateUnlimitedRate(t *testing.T) {
	m, f, tick := monitorAt()
	if e := m.Estimate("t", 0, 16); e.Wait != 0 || e.Depth != 0 {
		t.Fatalf("empty topic: %+v", e)
	}
	f.queue(31)
	tick()
	if e := m.Estimate("t", 0, 16); secs(e) != 2 {
		t.Fatalf("32 at 16 per second: %.2f s", secs(e))
	}
}

// TestEstimateFromDepth: where the broker counts only this process's
// acknowledgements (a RabbitMQ ingress, workers elsewhere), what left the
// queue still measures the drain.
func TestEstimateFromDepth(t *testing.T) {
	m, f, tick := monitorAt()
	f.queue(100)
	m.Add("t", 100)
	tick()
	for range 4 {
		f.mu.Lock()
		f.st.Depth -= 10 // taken by other processes: Consumed stays
		f.mu.Unlock()
		tick()
	}
	if e := m.Estimate("t", 0, 1); e.Drain < 19 || e.Drain > 21 || e.Stalled {
		t.Fatalf("depth falling 20/s: %+v", e)
	}
}

// TestEstimatePacked: with group commit a broker message carries several
// requests; depths and drain rates are in requests all the same.
func TestEstimatePacked(t *testing.T) {
	m, f, tick := monitorAt()
	for range 400 { // the ingress has been writing 10 requests per message
		m.Packed("t", 10)
	}
	f.queue(10) // 100 requests
	tick()
	if e := m.Estimate("t", 20, 8); e.Depth < 95 || e.Depth > 100 || secs(e) < 4.5 || secs(e) > 5.1 {
		t.Fatalf("10 messages of 10 requests at rate 20: %+v (%.1f s), want about 100 requests and 5 s", e, secs(e))
	}
	for range 4 { // the consumers take one message (10 requests) per half second
		f.take(1)
		tick()
	}
	if e := m.Estimate("t", 0, 8); e.Drain < 18 || e.Drain > 20.5 || e.Depth < 57 || e.Depth > 60 {
		t.Fatalf("6 messages left, 2 messages/s taken: %+v; want about 60 requests at about 20/s", e)
	}
	// Requests this process added since the poll count as requests.
	m.Add("t", 5)
	if e := m.Estimate("t", 0, 8); e.Depth < 62 || e.Depth > 65 {
		t.Fatalf("5 more: depth %d", e.Depth)
	}
	// A monitor that never learned a ratio counts messages.
	m2, f2, tick2 := monitorAt()
	f2.queue(10)
	tick2()
	if e := m2.Estimate("t", 20, 8); e.Depth != 10 {
		t.Fatalf("no ratio learned: depth %d, want 10", e.Depth)
	}
}

// TestDrainFromCluster: on RabbitMQ a worker process's consumed count is
// its own acknowledgements, and with publishes keeping the depth steady no
// depth goes away: two workers taking 20/s each read as a drain of 20/s.
// With the workers' figures (DrainFrom) the drain is the 40/s they take
// together, and the wait is the backlog over that.
func TestDrainFromCluster(t *testing.T) {
	for _, c := range []struct {
		name    string
		cluster func(string) (float64, bool)
		want    float64
	}{
		{"this process's acks alone", nil, 20},
		{"every worker's figures", func(topic string) (float64, bool) { return 40, topic == "t" }, 40},
		{"no figures yet", func(string) (float64, bool) { return 0, false }, 20},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, f, tick := monitorAt()
			if c.cluster != nil {
				m.DrainFrom(c.cluster)
			}
			f.queue(100)
			tick()
			for range 10 {
				f.take(10)  // this process: 20/s
				f.queue(20) // published elsewhere, as fast as both workers take
				f.mu.Lock()
				f.st.Depth -= 10 // taken by the other worker, acked there
				f.mu.Unlock()
				tick()
			}
			e := m.Estimate("t", 0, 8)
			if e.Drain < c.want-0.5 || e.Drain > c.want+0.5 {
				t.Fatalf("drain %.1f/s, want %v", e.Drain, c.want)
			}
			if want := 101 / c.want; secs(e) < want-0.1 || secs(e) > want+0.1 {
				t.Fatalf("wait %.2fs for depth %d, want %.2fs", secs(e), e.Depth, want)
			}
		})
	}
}
