package collector

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/results"
	"github.com/sluice-gw/sluice/wire"
)

// fakeTopic is an in-memory result topic: Depth counts messages not yet
// acknowledged, as brokers count them.
type fakeTopic struct {
	mu      sync.Mutex
	ready   []broker.Message
	unacked int64
	wake    chan struct{}
}

var (
	_ Broker              = (*fakeTopic)(nil)
	_ broker.Subscription = (*fakeSub)(nil)
	_ broker.Delivery     = (*fakeDelivery)(nil)
)

func newTopic() *fakeTopic { return &fakeTopic{wake: make(chan struct{}, 1)} }

func (f *fakeTopic) publish(m broker.Message) {
	f.mu.Lock()
	f.ready = append(f.ready, m)
	f.unacked++
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

func (f *fakeTopic) Subscribe(context.Context, string, broker.SubscribeOptions) (broker.Subscription, error) {
	return &fakeSub{f}, nil
}

func (f *fakeTopic) Stats(context.Context, string) (broker.QueueStats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return broker.QueueStats{Depth: f.unacked}, nil
}

type fakeSub struct{ f *fakeTopic }

func (s *fakeSub) Fetch(ctx context.Context, n int) ([]broker.Delivery, error) {
	for {
		s.f.mu.Lock()
		if len(s.f.ready) > 0 {
			k := min(n, len(s.f.ready))
			out := make([]broker.Delivery, k)
			for i, m := range s.f.ready[:k] {
				out[i] = &fakeDelivery{s.f, m}
			}
			s.f.ready = s.f.ready[k:]
			s.f.mu.Unlock()
			return out, nil
		}
		s.f.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.f.wake:
		}
	}
}

func (s *fakeSub) Close() error { return nil }

type fakeDelivery struct {
	f *fakeTopic
	m broker.Message
}

func (d *fakeDelivery) Message() broker.Message { return d.m }

func (d *fakeDelivery) Ack(context.Context) error {
	d.f.mu.Lock()
	d.f.unacked--
	d.f.mu.Unlock()
	return nil
}

func (d *fakeDelivery) Nack(context.Context, time.Duration) error {
	d.f.mu.Lock()
	d.f.unacked--
	d.f.mu.Unlock()
	d.f.publish(d.m)
	return nil
}

// fakeStore records the ids Apply stored, slowly, or fails when told.
type fakeStore struct {
	results.Store // only Apply is called
	mu            sync.Mutex
	stored        map[string]bool
	responses     map[string]bool // ids stored with a response
	logs          map[string]int  // the attempt log's length of the ids stored
	fail          bool
}

func (s *fakeStore) Apply(_ context.Context, events []*job.Event) error {
	time.Sleep(time.Millisecond) // a commit takes time
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail {
		return results.ErrUnavailable
	}
	for _, e := range events {
		s.stored[e.ID] = true
		if s.responses != nil && e.Response != nil {
			s.responses[e.ID] = true
		}
		if s.logs != nil {
			s.logs[e.ID] = len(e.AttemptLog)
		}
	}
	return nil
}

func (s *fakeStore) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.stored)
}

func publishEvents(f *fakeTopic, n int) {
	for i := range n {
		e := &job.Event{ID: fmt.Sprintf("e%d", i), Route: "r", Backend: "b", Status: job.Succeeded, Attempts: 1, At: time.Now()}
		f.publish(wire.EncodeEvent(e))
	}
}

// start runs c; the returned function waits for Run to return, within
// limit.
func start(t *testing.T, c *Collector, ctx context.Context) (wait func(limit time.Duration) time.Duration) {
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	return func(limit time.Duration) time.Duration {
		began := time.Now()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(limit):
			t.Fatalf("Run still running %v after its context ended", limit)
		}
		return time.Since(began)
	}
}

// TestStopByDrains: events published up to the stop are all stored
// before Run returns, after StopBy.
func TestStopByDrains(t *testing.T) {
	f, s := newTopic(), &fakeStore{stored: map[string]bool{}}
	c := New(f, s, zerolog.Nop(), Options{Batch: 10})
	ctx, cancel := context.WithCancel(context.Background())
	wait := start(t, c, ctx)
	const n = 500
	publishEvents(f, n)
	c.StopBy(time.Now().Add(10 * time.Second))
	cancel()
	wait(15 * time.Second)
	if got := s.count(); got != n {
		t.Fatalf("%d of %d events stored when Run returned", got, n)
	}
	if st, _ := f.Stats(context.Background(), broker.ResultTopic); st.Depth != 0 {
		t.Fatalf("result topic depth %d after the drain", st.Depth)
	}
}

// TestStopByDeadline: a topic that does not drain (the store fails) holds
// Run up to the deadline, not longer.
func TestStopByDeadline(t *testing.T) {
	f, s := newTopic(), &fakeStore{stored: map[string]bool{}, fail: true}
	c := New(f, s, zerolog.Nop(), Options{Batch: 10})
	ctx, cancel := context.WithCancel(context.Background())
	wait := start(t, c, ctx)
	publishEvents(f, 50)
	c.StopBy(time.Now().Add(300 * time.Millisecond))
	cancel()
	if took := wait(10 * time.Second); took < 200*time.Millisecond {
		t.Fatalf("Run returned after %v, before its deadline, with the topic not drained", took)
	}
}

// TestStopWithoutStopBy: without StopBy, Run returns when its context
// ends, whatever waits in the topic.
func TestStopWithoutStopBy(t *testing.T) {
	f, s := newTopic(), &fakeStore{stored: map[string]bool{}, fail: true}
	c := New(f, s, zerolog.Nop(), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	wait := start(t, c, ctx)
	publishEvents(f, 50)
	cancel()
	wait(5 * time.Second)
}

// TestKeepResponse: the keep policy decides which stored outcomes carry
// the backend's response; every one keeps its attempt log.
func TestKeepResponse(t *testing.T) {
	resp := &job.Response{Status: 200, Headers: map[string]string{"Content-Type": "text/plain"}, Body: "ok", BodyEncoding: "utf8"}
	outcomes := []*job.Event{
		{ID: "succeeded", Status: job.Succeeded, Response: resp},
		{ID: "failed", Status: job.Failed, Response: resp},
		{ID: "dead", Status: job.Failed, DeadLettered: true, Response: resp},
	}
	for _, tc := range []struct {
		name string
		keep job.Keep
		want string
	}{
		{"always", job.KeepAlways, "dead failed succeeded"},
		{"failures", job.KeepFailures, "dead failed"},
		{"never", job.KeepNever, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, s := newTopic(), &fakeStore{stored: map[string]bool{}, responses: map[string]bool{}, logs: map[string]int{}}
			c := New(f, s, zerolog.Nop(), Options{Keep: tc.keep})
			ctx, cancel := context.WithCancel(context.Background())
			wait := start(t, c, ctx)
			for _, e := range outcomes {
				cp := *e
				cp.Route, cp.Backend, cp.Attempts, cp.At = "r", "b", 2, time.Now()
				cp.AttemptLog = job.AttemptLog{{Attempt: 1, At: cp.At, Error: "timeout"}, {Attempt: 2, At: cp.At, Status: 200}}
				f.publish(wire.EncodeEvent(&cp))
			}
			c.StopBy(time.Now().Add(5 * time.Second))
			cancel()
			wait(10 * time.Second)
			var got []string
			for id := range s.responses {
				got = append(got, id)
			}
			slices.Sort(got)
			if strings.Join(got, " ") != tc.want || s.count() != len(outcomes) {
				t.Fatalf("stored %d outcomes, with a response: %q, want %q", s.count(), got, tc.want)
			}
			for _, e := range outcomes {
				if s.logs[e.ID] != 2 {
					t.Fatalf("%s stored with %d attempts in its log, want 2", e.ID, s.logs[e.ID])
				}
			}
		})
	}
}
