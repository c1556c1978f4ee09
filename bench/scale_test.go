package main

import (
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

func TestSpread(t *testing.T) {
	for _, tc := range []struct {
		name     string
		conns, n int
		want     []int
	}{
		{"one address", 64, 1, []int{64}},
		{"even", 64, 2, []int{32, 32}},
		{"the first get the rest", 64, 3, []int{22, 21, 21}},
		{"fewer connections than addresses", 2, 3, []int{1, 1, 0}},
		{"none", 0, 2, []int{0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := spread(tc.conns, tc.n); !slices.Equal(got, tc.want) {
				t.Errorf("spread(%d, %d) = %v, want %v", tc.conns, tc.n, got, tc.want)
			}
		})
	}
}

func TestMergeResults(t *testing.T) {
	a := loadResult{calls: 3, byStatus: map[int]int{202: 2, 503: 1}, errors: 1, elapsed: 2 * time.Second,
		latencies: []time.Duration{1, 5}, cpu: 10}
	b := loadResult{calls: 2, byStatus: map[int]int{202: 2}, elapsed: 3 * time.Second,
		latencies: []time.Duration{2, 9}, cpu: 5}
	got := mergeResults(a, b)
	if got.calls != 5 || got.errors != 1 || got.cpu != 15 || got.elapsed != 3*time.Second {
		t.Errorf("merged = calls %d, errors %d, cpu %d, elapsed %s; want 5, 1, 15, 3s", got.calls, got.errors, got.cpu, got.elapsed)
	}
	if got.byStatus[202] != 4 || got.byStatus[503] != 1 {
		t.Errorf("byStatus = %v, want 202: 4, 503: 1", got.byStatus)
	}
	if want := []time.Duration{1, 2, 5, 9}; !slices.Equal(got.latencies, want) {
		t.Errorf("latencies = %v, want %v (pooled, sorted)", got.latencies, want)
	}
	if got.rps() != 5.0/3 {
		t.Errorf("rps = %v, want 5 calls over the longest 3 s", got.rps())
	}
}

// TestSpreadLoadKeepsConnectionsWithTheirAddress: each address gets its
// share of the connections and never more at once; the counts add up and
// the count bound holds in total.
func TestSpreadLoadKeepsConnectionsWithTheirAddress(t *testing.T) {
	const conns = 7
	var calls, inFlight, peak [3]atomic.Int64
	ops := make([]op, 3)
	for i := range ops {
		ops[i] = func() (int, error) {
			n := inFlight[i].Add(1)
			for {
				p := peak[i].Load()
				if n <= p || peak[i].CompareAndSwap(p, n) {
					break
				}
			}
			time.Sleep(time.Millisecond)
			inFlight[i].Add(-1)
			calls[i].Add(1)
			return 202, nil
		}
	}
	var cpuReads atomic.Int64
	r := spreadLoad(loadSpec{conns: conns, dur: 5 * time.Second, maxCalls: 700, cpu: func() time.Duration {
		return time.Duration(cpuReads.Add(1)) * time.Second
	}}, ops)
	want := spread(conns, 3)
	total := int64(0)
	for i := range ops {
		if p := peak[i].Load(); p > int64(want[i]) || p == 0 {
			t.Errorf("address %d: %d calls at once, want 1..%d", i, p, want[i])
		}
		total += calls[i].Load()
	}
	if total != int64(r.calls) || r.byStatus[202] != r.calls {
		t.Errorf("%d calls made, result counts %d (%v)", total, r.calls, r.byStatus)
	}
	if r.calls > 700 || r.calls < 690 {
		t.Errorf("%d calls, want about 700 (the bound, split by share)", r.calls)
	}
	if r.cpu != time.Second {
		t.Errorf("cpu = %s, want the difference of the reads around the run (1s)", r.cpu)
	}
}

func TestDrainRate(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var ts []time.Time
	// Before t0: not counted.
	for i := range 50 {
		ts = append(ts, t0.Add(-time.Duration(i+1)*time.Millisecond))
	}
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	// After: a slow start, 1000/s in the middle, a slow tail.
	ts = append(ts, t0.Add(500*time.Millisecond))
	for i := range 1000 {
		ts = append(ts, t0.Add(time.Second+time.Duration(i)*time.Millisecond))
	}
	ts = append(ts, t0.Add(5*time.Second))
	if got := drainRate(ts, t0); got < 999 || got > 1001 {
		t.Errorf("drainRate = %.1f, want 1000 (the middle, start and tail left out)", got)
	}
	if got := drainRate(ts[:50], t0); got != 0 {
		t.Errorf("drainRate with nothing after t0 = %v, want 0", got)
	}
}
