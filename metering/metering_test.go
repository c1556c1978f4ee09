package metering

import (
	"encoding/json"
	"reflect"
	"strconv"
	"sync"
	"testing"
)

// TestCountByStatus: accepted answers count by their own 2xx code (a
// route's ack.status) as well as in accepted; refusals by status; bytes
// only for what was accepted. GET /admin/clients keeps its shape.
func TestCountByStatus(t *testing.T) {
	t.Parallel()
	m := &Meter{}
	m.Count("a", "logs", 202, 100)
	m.Count("a", "logs", 202, 50)
	m.Count("a", "logs", 413, 9999)
	m.Count("a", "logs", 429, 10)
	m.Count("a", "logs", 429, 10)
	m.Count("a", "hooks", 200, 7)
	m.Count("a", "hooks", 201, 3)
	m.Count("a", "hooks", 204, 1) // no route answers it today; still counted as accepted
	m.Count("", "logs", 401, 0)

	want := []Answers{
		{Client: "", Route: "logs", Bytes: 0, ByStatus: map[int]int64{401: 1}},
		{Client: "a", Route: "hooks", Bytes: 11, ByStatus: map[int]int64{200: 1, 201: 1, 204: 1}},
		{Client: "a", Route: "logs", Bytes: 150, ByStatus: map[int]int64{202: 2, 413: 1, 429: 2}},
	}
	if got := m.ByStatus(); !reflect.DeepEqual(got, want) {
		t.Fatalf("ByStatus:\n got %+v\nwant %+v", got, want)
	}
	b, _ := json.Marshal(m.Snapshot())
	const wantJSON = `[{"client":"","routes":[{"route":"logs","accepted":0,"bytes":0,"rejected":{"401":1}}]},` +
		`{"client":"a","routes":[{"route":"hooks","accepted":3,"bytes":11,"rejected":{}},` +
		`{"route":"logs","accepted":2,"bytes":150,"rejected":{"413":1,"429":2}}]}]`
	if string(b) != wantJSON {
		t.Fatalf("Snapshot:\n got %s\nwant %s", b, wantJSON)
	}
}

// TestCountAllocations: on a row seen before, counting allocates nothing,
// accepted (any ack status) or refused.
func TestCountAllocations(t *testing.T) {
	m := &Meter{}
	for _, s := range []int{200, 201, 202, 413} {
		m.Count("team-a", "logs", s, 1)
	}
	for _, s := range []int{200, 201, 202, 413} {
		if n := testing.AllocsPerRun(1000, func() { m.Count("team-a", "logs", s, 1024) }); n != 0 {
			t.Errorf("Count with %d: %.1f allocations, want 0", s, n)
		}
	}
}

// TestCountConcurrent: counts from many goroutines add up (run with -race).
func TestCountConcurrent(t *testing.T) {
	t.Parallel()
	m := &Meter{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range 1000 {
				m.Count("c", "r", []int{202, 429}[i%2], 1)
				if i%250 == 0 {
					_ = m.ByStatus()
					_ = m.Snapshot()
				}
			}
		})
	}
	wg.Wait()
	got := m.ByStatus()
	if len(got) != 1 || got[0].ByStatus[202] != 4000 || got[0].ByStatus[429] != 4000 || got[0].Bytes != 4000 {
		t.Fatalf("got %+v", got)
	}
}

func BenchmarkCount(b *testing.B) {
	m := &Meter{}
	m.Count("team-a", "logs", 202, 1)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Count("team-a", "logs", 202, 1024)
		}
	})
}

// TestRowsBounded: a flood of distinct clients (JWTs with made-up names)
// stops making rows at MaxRows; the rest are counted as Overflow, per
// route, and nothing is lost from the totals.
func TestRowsBounded(t *testing.T) {
	var m Meter
	const n = MaxRows + 500
	for i := range n {
		m.Count("c"+strconv.Itoa(i), "logs", 403, 0)
	}
	m.Count("c1", "logs", 202, 10) // a known client keeps its row
	var clients, total int64
	var other int64
	for _, c := range m.Snapshot() {
		clients++
		for _, r := range c.Routes {
			total += r.Rejected["403"]
			if c.Client == Overflow {
				other = r.Rejected["403"]
			}
			if c.Client == "c1" && r.Accepted != 1 {
				t.Fatalf("c1 accepted %d", r.Accepted)
			}
		}
	}
	if clients > MaxRows+1 || total != n || other != 500 {
		t.Fatalf("%d clients, %d counted, %d under %s", clients, total, other, Overflow)
	}
}
