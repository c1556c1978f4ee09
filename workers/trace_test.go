package workers

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/wire"
)

// fakeTracer records the attempts a pool traces, and sets traceparent
// "attempt-<n>" on each.
type fakeTracer struct {
	mu    sync.Mutex
	spans []fakeAttempt
}

type fakeAttempt struct {
	id, inbound       string // request id; the traceparent the request carried
	n                 int
	status            int
	category          string
	ended, endedEarly bool
}

var _ Tracer = (*fakeTracer)(nil)

func (f *fakeTracer) Attempt(hr *http.Request, req *job.Request, n int) func(int, string) {
	f.mu.Lock()
	i := len(f.spans)
	f.spans = append(f.spans, fakeAttempt{id: req.ID, inbound: hr.Header.Get("Traceparent"), n: n})
	f.mu.Unlock()
	hr.Header.Set("Traceparent", "attempt-"+string(rune('0'+n)))
	return func(status int, category string) {
		f.mu.Lock()
		defer f.mu.Unlock()
		s := &f.spans[i]
		s.endedEarly = s.ended
		s.ended, s.status, s.category = true, status, category
	}
}

func (f *fakeTracer) all() []fakeAttempt {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeAttempt(nil), f.spans...)
}

// TestAttemptSpans: each attempt is traced with its number, the trace
// context the request carried, and its outcome; the backend gets the
// span's traceparent in place of the carried one.
func TestAttemptSpans(t *testing.T) {
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Header.Get("Traceparent")+" "+r.Header.Get("X-Sluice-Attempt"))
		mu.Unlock()
		if r.Header.Get("X-Sluice-Attempt") == "1" {
			w.WriteHeader(503)
		}
	}))
	defer srv.Close()
	br := &fakeBroker{}
	b := testBackend(`"` + srv.URL + `"`)
	off := 0
	b.Breaker.Failures = &off // the 503 must not hold the second attempt back
	p := newTestPool(b, br)
	tr := &fakeTracer{}
	m := &Manager{pools: map[string]*Pool{"b": p}}
	m.SetTracer(tr)

	req := request("a")
	req.Header = [][2]string{{"traceparent", "accept"}}
	for n := range 2 {
		req.Attempts = n
		d := &fakeDelivery{msg: wire.EncodeRequest(req), log: &actionLog{}}
		permit, _ := p.lim.Acquire(context.Background())
		p.deliver(context.Background(), d, permit)
	}
	// A backend that is not there: the span ends with the error's category.
	dead := newTestPool(testBackend(`"http://127.0.0.1:1/"`), br)
	dead.tracer = tr
	req.Attempts = 0
	d := &fakeDelivery{msg: wire.EncodeRequest(req), log: &actionLog{}}
	permit, _ := dead.lim.Acquire(context.Background())
	dead.deliver(context.Background(), d, permit)

	spans := tr.all()
	want := []fakeAttempt{
		{id: "a", inbound: "accept", n: 1, status: 503, ended: true},
		{id: "a", inbound: "accept", n: 2, status: 200, ended: true},
		{id: "a", inbound: "accept", n: 1, category: ErrRefused, ended: true},
	}
	if len(spans) != len(want) {
		t.Fatalf("spans %+v, want %+v", spans, want)
	}
	for i := range want {
		if spans[i] != want[i] {
			t.Errorf("span %d: %+v, want %+v", i, spans[i], want[i])
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || got[0] != "attempt-1 1" || got[1] != "attempt-2 2" {
		t.Fatalf("backend got traceparents %q, want each attempt's own", got)
	}
}

// TestNoTracerPassesTraceparent: without a tracer the backend gets the
// traceparent the request carried.
func TestNoTracerPassesTraceparent(t *testing.T) {
	got := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("Traceparent") + "|" + r.Header.Get("Tracestate")
	}))
	defer srv.Close()
	p := newTestPool(testBackend(`"`+srv.URL+`"`), &fakeBroker{})
	req := request("a")
	req.Header = [][2]string{{"Traceparent", "00-client"}, {"Tracestate", "a=1"}}
	d := &fakeDelivery{msg: wire.EncodeRequest(req), log: &actionLog{}}
	permit, _ := p.lim.Acquire(context.Background())
	p.deliver(context.Background(), d, permit)
	select {
	case v := <-got:
		if v != "00-client|a=1" {
			t.Fatalf("backend got %q", v)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no delivery")
	}
}
