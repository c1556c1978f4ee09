package workers

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/wire"
)

// TestAttemptLog: each attempt adds its entry — status or error
// category, time, duration — to the retry copy and to its outcome's
// event, after the entries the request came with; an attempt that got no
// answer has status 0.
func TestAttemptLog(t *testing.T) {
	t.Parallel()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		time.Sleep(30 * time.Millisecond)
		if n.Add(1) == 1 {
			w.WriteHeader(503)
		}
	}))
	defer srv.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()

	// Attempt 1 was refused (on a url since gone); attempt 2 gets a 503,
	// attempt 3 a 200.
	br := &fakeBroker{}
	refused := newTestPool(testBackend(`"`+closedURL+`"`), br)
	b := testBackend(`"` + srv.URL + `"`)
	noBreaker := 0 // the 503 would open it for a minute
	b.Breaker.Failures = &noBreaker
	p := newTestPool(b, br)
	req := request("a")
	req.Gen = 1
	msg := wire.EncodeRequest(req)
	for i, pool := range []*Pool{refused, p, p} {
		before := time.Now().UTC()
		d := &fakeDelivery{msg: msg, log: &actionLog{}}
		permit, _ := pool.lim.Acquire(context.Background())
		pool.deliver(context.Background(), d, permit)
		sent := br.sent()
		evs := br.events(t)
		ev := evs[len(evs)-1]
		if len(ev.AttemptLog) != i+1 {
			t.Fatalf("attempt %d: event %s with %d entries, want %d", i+1, ev.Status, len(ev.AttemptLog), i+1)
		}
		a := ev.AttemptLog[i]
		if a.Gen != 1 || a.Attempt != i+1 || a.At.Before(before) || a.At.After(time.Now()) || a.At.Location() != time.UTC {
			t.Fatalf("attempt %d: entry %+v", i+1, a)
		}
		switch i {
		case 0:
			if a.Status != 0 || a.Error != ErrRefused {
				t.Fatalf("refused attempt: %+v", a)
			}
		case 1:
			if a.Status != 503 || a.Error != "" || a.DurationMS < 30 {
				t.Fatalf("503 attempt: %+v", a)
			}
		case 2:
			if a.Status != 200 || a.Error != "" || a.DurationMS < 30 || ev.Status != job.Succeeded {
				t.Fatalf("200 attempt: %+v (%s)", a, ev.Status)
			}
			if !a.At.After(ev.AttemptLog[1].At) {
				t.Fatalf("attempts out of time order: %+v", ev.AttemptLog)
			}
			return
		}
		// The retry copy carries the same log: the next attempt adds to it.
		last := sent[len(sent)-1]
		for _, s := range sent {
			if s.topic == broker.RequestTopic("b") {
				last = s
			}
		}
		next, err := wire.DecodeRequest(last.msg)
		if err != nil || ev.Status != job.Retrying || len(next.AttemptLog) != i+1 || next.AttemptLog[i] != a {
			t.Fatalf("attempt %d: retry copy %+v %v, event %s", i+1, next, err, ev.Status)
		}
		msg = last.msg
	}
}

// TestReplayKeepsAttemptLog: a replayed dead letter starts a new
// generation with fresh attempts and keeps the log of the earlier ones,
// in the request it writes again and in its queued event.
func TestReplayKeepsAttemptLog(t *testing.T) {
	t.Parallel()
	br := &fakeDLQ{}
	r := request("a")
	r.Attempts, r.DeadAt, r.LastError = 2, time.Now(), "500 Internal Server Error"
	at := r.AcceptedAt
	r.AttemptLog = job.AttemptLog{{Attempt: 1, At: at, Status: 500, DurationMS: 3}, {Attempt: 2, At: at.Add(time.Second), Status: 500}}
	br.add(r)
	d, store := testDeadLetters(br)
	if n, err := d.Replay(context.Background(), "b", nil); n != 1 || err != nil {
		t.Fatalf("replay: %d %v", n, err)
	}
	var again *job.Request
	for _, s := range br.sent() {
		if s.topic == broker.RequestTopic("b") {
			again, _ = wire.DecodeRequest(s.msg)
		}
	}
	if again == nil || again.Gen != 1 || again.Attempts != 0 || len(again.AttemptLog) != 2 || again.AttemptLog[1].Attempt != 2 {
		t.Fatalf("replayed request %+v", again)
	}
	if ev := store.applied[0]; ev.Status != job.Queued || ev.Gen != 1 || len(ev.AttemptLog) != 2 {
		t.Fatalf("queued event %+v", ev)
	}
}
