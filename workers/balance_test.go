package workers

import (
	"fmt"
	"testing"
	"time"
)

func testBalancer(n int) (*balancer, *time.Time) {
	b := newBalancer(n)
	now := time.Unix(1000, 0)
	b.now = func() time.Time { return now }
	return b, &now
}

func picks(b *balancer, n, avoid int) []int {
	var out []int
	for range n {
		i, probe := b.pick(avoid)
		if probe {
			b.report(i, true, outcomeNeutral)
		}
		out = append(out, i)
	}
	return out
}

func TestBalancerRoundRobin(t *testing.T) {
	t.Parallel()
	b, _ := testBalancer(3)
	if got := fmt.Sprint(picks(b, 6, -1)); got != "[0 1 2 0 1 2]" {
		t.Fatalf("picks %s", got)
	}
}

// TestBalancerEjectsAndProbes: a url that refuses leaves the rotation at
// once, gets one probe when its interval ends, and the interval doubles
// while probes fail; a good probe puts it back.
func TestBalancerEjectsAndProbes(t *testing.T) {
	t.Parallel()
	b, now := testBalancer(2)
	b.report(1, false, outcomeConnFailure)
	for _, i := range picks(b, 10, -1) {
		if i != 0 {
			t.Fatal("an ejected url was picked")
		}
	}
	*now = now.Add(ejectBase)
	i, probe := b.pick(-1)
	if i != 1 || !probe {
		t.Fatalf("after the interval: pick %d probe %v, want a probe of 1", i, probe)
	}
	if j, _ := b.pick(-1); j != 0 {
		t.Fatal("a second attempt went to a url under probe")
	}
	b.report(1, true, outcomeConnFailure) // probe failed: out for twice as long
	*now = now.Add(ejectBase)
	for _, i := range picks(b, 4, -1) {
		if i != 0 {
			t.Fatal("picked before the doubled interval ended")
		}
	}
	*now = now.Add(ejectBase)
	if i, probe := b.pick(-1); i != 1 || !probe {
		t.Fatalf("pick %d probe %v, want the second probe", i, probe)
	}
	b.report(1, true, outcomeOK)
	if got := fmt.Sprint(b.healthy()); got != "[true true]" {
		t.Fatalf("after a good probe: %s", got)
	}
}

func TestBalancer5xxStreak(t *testing.T) {
	t.Parallel()
	b, _ := testBalancer(2)
	for range ejectAfter5xx - 1 {
		b.report(1, false, outcome5xx)
	}
	b.report(1, false, outcomeOK) // an answer breaks the streak
	for range ejectAfter5xx - 1 {
		b.report(1, false, outcome5xx)
	}
	if !b.healthy()[1] {
		t.Fatal("ejected before the streak was complete")
	}
	b.report(1, false, outcome5xx)
	if b.healthy()[1] {
		t.Fatal("not ejected after the streak")
	}
}

// TestBalancerRetryElsewhere: a retry avoids the url that failed while
// another one is healthy, and uses it when it is the only one.
func TestBalancerRetryElsewhere(t *testing.T) {
	t.Parallel()
	b, _ := testBalancer(3)
	for range 10 {
		if i, _ := b.pick(1); i == 1 {
			t.Fatal("retry went to the url it failed on")
		}
	}
	b.report(0, false, outcomeConnFailure)
	b.report(2, false, outcomeConnFailure)
	if i, _ := b.pick(1); i != 1 {
		t.Fatalf("only url 1 is healthy, got %d", i)
	}
}

func TestBalancerAllEjected(t *testing.T) {
	t.Parallel()
	b, now := testBalancer(2)
	b.report(0, false, outcomeConnFailure)
	*now = now.Add(100 * time.Millisecond)
	b.report(1, false, outcomeConnFailure)
	if i, probe := b.pick(-1); i != 0 || probe {
		t.Fatalf("all out: pick %d probe %v, want 0, the one back soonest", i, probe)
	}
	// Late failures of attempts picked before an ejection do not extend it.
	until := b.eps[1].until
	b.report(1, false, outcomeConnFailure)
	if !b.eps[1].until.Equal(until) {
		t.Fatal("a late failure extended the ejection")
	}
}

// healthy lists whether each url is in the rotation now.
func (b *balancer) healthy() []bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]bool, len(b.eps))
	for i, e := range b.eps {
		out[i] = e.until.IsZero()
	}
	return out
}
