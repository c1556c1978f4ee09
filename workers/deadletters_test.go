package workers

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/wire"
)

// fakeDLQ is a broker with a dead-letter topic a test fills.
type fakeDLQ struct {
	fakeBroker
	dead  []broker.DeadLetter
	taken []string
}

var _ broker.Broker = (*fakeDLQ)(nil)

func (f *fakeDLQ) ListDead(context.Context, string, int) ([]broker.DeadLetter, error) {
	var out []broker.DeadLetter
	for _, d := range f.dead {
		if !slices.Contains(f.taken, d.Pos) {
			d.Body = nil
			out = append(out, d)
		}
	}
	return out, nil
}
func (f *fakeDLQ) ReadDead(_ context.Context, _ string, pos []string) ([]broker.DeadLetter, error) {
	var out []broker.DeadLetter
	for _, p := range pos {
		for _, d := range f.dead {
			if d.Pos == p && !slices.Contains(f.taken, p) {
				out = append(out, d)
			}
		}
	}
	return out, nil
}
func (f *fakeDLQ) TakeDead(_ context.Context, _ string, pos []string) error {
	f.taken = append(f.taken, pos...)
	return nil
}
func (f *fakeDLQ) Stats(context.Context, string) (broker.QueueStats, error) {
	return broker.QueueStats{}, nil
}
func (f *fakeDLQ) Ping(context.Context) error    { return nil }
func (f *fakeDLQ) Close() error                  { return nil }
func (f *fakeDLQ) Run(ctx context.Context) error { <-ctx.Done(); return nil }

func (f *fakeDLQ) add(r *job.Request) {
	f.dead = append(f.dead, broker.DeadLetter{Message: wire.EncodeRequest(r), Pos: strconv.Itoa(len(f.dead))})
}

// recorder is a result store that keeps what it is given.
type recorder struct{ applied []*job.Event }

func (r *recorder) Apply(_ context.Context, events []*job.Event) error {
	r.applied = append(r.applied, events...)
	return nil
}

var _ Recorder = (*recorder)(nil)

func testDeadLetters(br broker.Broker) (*DeadLetters, *recorder) {
	store := &recorder{}
	return NewDeadLetters(br, []string{"b"}, store, zerolog.Nop()), store
}

// TestDeadLettersOncePerID: copies of one request (a replay that failed
// again before its old copy was taken, a crash between a dead letter's
// write and its ack) list once, at their newest generation; a replay
// writes it once and takes every copy it listed.
func TestDeadLettersOncePerID(t *testing.T) {
	t.Parallel()
	br := &fakeDLQ{}
	now := time.Now().UTC()
	a0, a1, b0 := request("a"), request("a"), request("b")
	a0.DeadAt, b0.DeadAt = now, now
	a1.Gen, a1.DeadAt, a1.LastError = 1, now, "503 Service Unavailable"
	br.add(a0)
	br.add(b0)
	br.add(a1)
	br.add(a1)
	d, store := testDeadLetters(br)
	list, err := d.List(context.Background(), "b", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].ID != "a" || list[0].LastError != a1.LastError || list[1].ID != "b" {
		t.Fatalf("listed %+v", list)
	}
	n, err := d.Replay(context.Background(), "b", []string{"a"})
	events := store.applied
	if err != nil || n != 1 || len(events) != 1 || events[0].Gen != 2 {
		t.Fatalf("replay: %v %+v", err, events)
	}
	if len(br.taken) != 3 {
		t.Fatalf("took %v, want the three copies of a", br.taken)
	}
	var requests []string
	for _, p := range br.sent() {
		switch p.topic {
		case broker.RequestTopic("b"):
			requests = append(requests, "request "+string(p.msg.Body))
		case broker.ResultTopic:
			requests = append(requests, "event")
		}
	}
	if fmt.Sprint(requests) != "[request {} event]" {
		t.Fatalf("replay wrote %v, want the request (with its body) once, then its queued event", requests)
	}
}

// TestDeadLetteredByTheBroker: a request the broker dead-lettered by itself
// (RabbitMQ's delivery limit, a crash loop) lists with a reason and is
// recorded as failed, so its poll does not stay pending.
func TestDeadLetteredByTheBroker(t *testing.T) {
	t.Parallel()
	br := &fakeDLQ{}
	r := request("poison")
	r.Attempts = 2
	br.add(r)
	d, _ := testDeadLetters(br)
	list, err := d.List(context.Background(), "b", 10)
	if err != nil || len(list) != 1 || list[0].LastError != ErrDeliveryLimit {
		t.Fatalf("listed %+v, %v", list, err)
	}
	evs := br.events(t)
	if len(evs) != 1 || evs[0].Status != job.Failed || !evs[0].DeadLettered || evs[0].Attempts != 3 {
		t.Fatalf("events %+v", evs)
	}
	var rec job.Record
	rec.Apply(job.EventFor(r, job.InFlight, 3))
	if !rec.Apply(evs[0]) || rec.Status != job.Failed {
		t.Fatalf("the event does not end a record left in flight: %+v", rec)
	}
}

// TestReplayWritesTheRequestFirst: when the request cannot be written, no
// queued event says it is queued, and nothing is taken out.
func TestReplayWritesTheRequestFirst(t *testing.T) {
	t.Parallel()
	br := &fakeDLQ{}
	br.publish = func(topic string, _ broker.Message) error {
		if topic == broker.RequestTopic("b") {
			return errDown
		}
		return nil
	}
	r := request("a")
	r.DeadAt = time.Now()
	br.add(r)
	d, store := testDeadLetters(br)
	n, err := d.Replay(context.Background(), "b", nil)
	events := store.applied
	if err == nil || n != 0 || len(events) != 0 || len(br.events(t)) != 0 || len(br.taken) != 0 {
		t.Fatalf("replay with the request refused: err %v, %d events returned, %d published, taken %v",
			err, len(events), len(br.events(t)), br.taken)
	}
}
