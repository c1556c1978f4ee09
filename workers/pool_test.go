package workers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/config"
	"github.com/sluice-gw/sluice/internal/wait"
	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/wire"
)

// fakeBroker is a broker whose publishes a test scripts and records.
type fakeBroker struct {
	mu        sync.Mutex
	published []published
	publish   func(topic string, msg broker.Message) error // nil: accept
	subscribe func() (broker.Subscription, error)
}

type published struct {
	topic string
	msg   broker.Message
	at    time.Time
}

var _ Broker = (*fakeBroker)(nil)

func (f *fakeBroker) Publish(ctx context.Context, topic string, msg broker.Message) error {
	var err error
	if f.publish != nil {
		err = f.publish(topic, msg)
	}
	if err == nil {
		f.mu.Lock()
		f.published = append(f.published, published{topic, msg, time.Now()})
		f.mu.Unlock()
	}
	return err
}

func (f *fakeBroker) Subscribe(context.Context, string, broker.SubscribeOptions) (broker.Subscription, error) {
	return f.subscribe()
}

func (f *fakeBroker) sent() []published {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]published(nil), f.published...)
}

// events decodes the status events published so far.
func (f *fakeBroker) events(t *testing.T) []*job.Event {
	t.Helper()
	var out []*job.Event
	for _, p := range f.sent() {
		if p.topic == broker.ResultTopic {
			e, err := wire.DecodeEvent(p.msg)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, e)
		}
	}
	return out
}

// fakeDelivery records how it was settled, in a log shared by a test.
type fakeDelivery struct {
	msg   broker.Message
	log   *actionLog
	acks  int
	nacks int
}

type actionLog struct {
	mu sync.Mutex
	a  []string
}

func (l *actionLog) add(s string) { l.mu.Lock(); l.a = append(l.a, s); l.mu.Unlock() }
func (l *actionLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.a...)
}

var _ broker.Delivery = (*fakeDelivery)(nil)

func (d *fakeDelivery) Message() broker.Message { return d.msg }
func (d *fakeDelivery) Ack(context.Context) error {
	d.log.add("ack " + d.msg.Key)
	d.acks++
	return nil
}
func (d *fakeDelivery) Nack(context.Context, time.Duration) error {
	d.log.add("nack " + d.msg.Key)
	d.nacks++
	return nil
}

func testBackend(urls ...string) config.Backend {
	c, err := config.Parse([]byte(fmt.Sprintf(`
routes: [{name: r, path: /r, backend: b}]
backends:
  - name: b
    urls: [%s]
    timeout: 2s
    retry: {max_attempts: 3, initial_backoff: 10ms, max_backoff: 50ms}
    breaker: {failures: 1, cooldown: 1m}
`, strings.Join(urls, ", "))), ".")
	if err != nil {
		panic(err)
	}
	return c.Backends[0]
}

func newTestPool(b config.Backend, br Broker) *Pool {
	p := NewPool(b, br, zerolog.Nop(), time.Second)
	p.settleWithin = 300 * time.Millisecond
	return p
}

func request(id string) *job.Request {
	return &job.Request{ID: id, Route: "r", Backend: "b", Method: "POST", Body: []byte(`{}`), AcceptedAt: time.Now().UTC()}
}

var errDown = fmt.Errorf("%w: test", broker.ErrUnavailable)

// TestSettleCopyThenEventFails: once the retry copy is durable the original
// is done; a status event the broker cannot take does not hand it back
// (that would fork the request into two retry chains).
func TestSettleCopyThenEventFails(t *testing.T) {
	t.Parallel()
	br := &fakeBroker{publish: func(topic string, _ broker.Message) error {
		if topic == broker.ResultTopic {
			return errDown
		}
		return nil
	}}
	p := newTestPool(testBackend(`"http://127.0.0.1:1"`), br)
	d := &fakeDelivery{msg: wire.EncodeRequest(request("a")), log: &actionLog{}}
	ev := job.EventFor(request("a"), job.Retrying, 1)
	if !p.settle(context.Background(), d, ev, broker.RequestTopic("b"), wire.EncodeRequest(request("a"))) {
		t.Fatal("settle reported the delivery not acknowledged")
	}
	if d.acks != 1 || d.nacks != 0 {
		t.Fatalf("acks %d nacks %d, want the original acknowledged once", d.acks, d.nacks)
	}
	if n := len(br.sent()); n != 1 {
		t.Fatalf("%d messages written, want the one retry copy", n)
	}
}

// TestSettleWithoutCopyEventFails: with nothing durable yet, the delivery
// goes back, so the attempt is made again.
func TestSettleWithoutCopyEventFails(t *testing.T) {
	t.Parallel()
	br := &fakeBroker{publish: func(string, broker.Message) error { return errDown }}
	p := newTestPool(testBackend(`"http://127.0.0.1:1"`), br)
	d := &fakeDelivery{msg: wire.EncodeRequest(request("a")), log: &actionLog{}}
	if p.settle(context.Background(), d, job.EventFor(request("a"), job.Succeeded, 1), "", broker.Message{}) {
		t.Fatal("settle acknowledged an outcome that was not stored")
	}
	if d.acks != 0 || d.nacks != 1 {
		t.Fatalf("acks %d nacks %d, want one hand-back", d.acks, d.nacks)
	}
}

// TestSettleEventTooLarge: an outcome the broker refuses for its size is
// stored truncated, never handed back as if the broker were away.
func TestSettleEventTooLarge(t *testing.T) {
	t.Parallel()
	br := &fakeBroker{publish: func(topic string, msg broker.Message) error {
		if len(msg.Body) > 4096 {
			return fmt.Errorf("%w: test", broker.ErrTooLarge)
		}
		return nil
	}}
	p := newTestPool(testBackend(`"http://127.0.0.1:1"`), br)
	d := &fakeDelivery{msg: wire.EncodeRequest(request("a")), log: &actionLog{}}
	ev := job.EventFor(request("a"), job.Succeeded, 1)
	ev.Response = job.NewResponse(200, http.Header{"Content-Type": {"text/html"}, "Content-Length": {"100000"}},
		[]byte(strings.Repeat("<", 100000)), false)
	if !p.settle(context.Background(), d, ev, "", broker.Message{}) || d.acks != 1 || d.nacks != 0 {
		t.Fatalf("settle: acks %d nacks %d, want acknowledged", d.acks, d.nacks)
	}
	evs := br.events(t)
	if len(evs) != 1 || evs[0].Status != job.Succeeded || evs[0].Response == nil ||
		!evs[0].Response.Truncated || evs[0].Response.Body != "" || evs[0].Response.Status != 200 {
		t.Fatalf("stored event: %+v", evs)
	}
	if _, ok := evs[0].Response.Headers["Content-Length"]; ok {
		t.Fatal("a truncated response kept its Content-Length")
	}
}

// TestSettleCopyTooLarge: a retry copy the broker refuses for its size
// ends the request as failed, acknowledged, not retried forever.
func TestSettleCopyTooLarge(t *testing.T) {
	t.Parallel()
	br := &fakeBroker{publish: func(topic string, _ broker.Message) error {
		if topic != broker.ResultTopic {
			return fmt.Errorf("%w: test", broker.ErrTooLarge)
		}
		return nil
	}}
	p := newTestPool(testBackend(`"http://127.0.0.1:1"`), br)
	d := &fakeDelivery{msg: wire.EncodeRequest(request("a")), log: &actionLog{}}
	ev := job.EventFor(request("a"), job.Retrying, 1)
	if !p.settle(context.Background(), d, ev, broker.RequestTopic("b"), wire.EncodeRequest(request("a"))) || d.acks != 1 {
		t.Fatalf("acks %d nacks %d", d.acks, d.nacks)
	}
	evs := br.events(t)
	if len(evs) != 1 || evs[0].Status != job.Failed || evs[0].LastError == "" {
		t.Fatalf("event %+v, want failed with a reason", evs)
	}
}

// TestInFlightEventBeforeOutcome: the in_flight event of a slow attempt is
// published before the outcome, and nothing is published after deliver
// returns.
func TestInFlightEventBeforeOutcome(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		time.Sleep(80 * time.Millisecond)
	}))
	defer srv.Close()
	br := &fakeBroker{publish: func(topic string, msg broker.Message) error {
		if e, _ := wire.DecodeEvent(msg); e != nil && e.Status == job.InFlight {
			time.Sleep(150 * time.Millisecond) // a slow broker: still publishing when the answer comes
		}
		return nil
	}}
	p := newTestPool(testBackend(`"`+srv.URL+`"`), br)
	d := &fakeDelivery{msg: wire.EncodeRequest(request("a")), log: &actionLog{}}
	permit, _ := p.lim.Acquire(context.Background())
	p.deliver(context.Background(), d, permit)
	evs := br.events(t)
	if len(evs) != 2 || evs[0].Status != job.InFlight || evs[1].Status != job.Succeeded {
		t.Fatalf("events %v, want in_flight then succeeded", evs)
	}
	// Nothing is published once deliver returned: watched for a window
	// longer than the slow broker's publish.
	wait.Never(t, 200*time.Millisecond, "an event published after deliver returned", func() bool {
		return len(br.events(t)) != 2
	})
}

// TestBadHeaderIsTerminalAndNeutral: a request sluice cannot build fails at
// once and never counts against the backend (breaker at 1 failure stays
// closed); the backend sees nothing.
func TestBadHeaderIsTerminalAndNeutral(t *testing.T) {
	t.Parallel()
	var hits int
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { mu.Lock(); hits++; mu.Unlock() }))
	defer srv.Close()
	br := &fakeBroker{}
	p := newTestPool(testBackend(`"`+srv.URL+`"`), br)
	for _, h := range [][2]string{{"Bad Name", "v"}, {"X-Ok", "a\x00b"}, {"X-Ok", "line\nbreak"}} {
		req := request("a")
		req.Header = [][2]string{h}
		d := &fakeDelivery{msg: wire.EncodeRequest(req), log: &actionLog{}}
		permit, _ := p.lim.Acquire(context.Background())
		p.deliver(context.Background(), d, permit)
		if d.acks != 1 {
			t.Fatalf("header %q: not acknowledged", h)
		}
	}
	evs := br.events(t)
	if len(evs) != 3 {
		t.Fatalf("%d events for 3 requests sluice could not build: %+v", len(evs), evs)
	}
	for _, e := range evs {
		if e.Status != job.Failed || e.LastError != ErrRequest || e.DeadLettered {
			t.Fatalf("event %+v, want failed %q, not dead-lettered", e, ErrRequest)
		}
	}
	if st := p.lim.State().Breaker; st != "closed" {
		t.Fatalf("breaker %s after requests sluice could not build", st)
	}
	if hits != 0 {
		t.Fatalf("backend got %d requests", hits)
	}
}

// fakeSub hands out a fixed set of deliveries once, then nothing.
type fakeSub struct {
	mu  sync.Mutex
	ds  []broker.Delivery
	log *actionLog
}

func (s *fakeSub) Fetch(ctx context.Context, max int) ([]broker.Delivery, error) {
	s.mu.Lock()
	if len(s.ds) > 0 {
		n := min(max, len(s.ds))
		out := s.ds[:n]
		s.ds = s.ds[n:]
		s.mu.Unlock()
		return out, nil
	}
	s.mu.Unlock()
	<-ctx.Done()
	return nil, ctx.Err()
}

func (s *fakeSub) Close() error { s.log.add("close"); return nil }

// TestStopSettlesBeforeClose: a graceful stop lets deliveries in flight
// finish and settle, and only then closes the subscription (closing first
// made RabbitMQ hand every in-flight request out again).
func TestStopSettlesBeforeClose(t *testing.T) {
	t.Parallel()
	var arrived atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		arrived.Add(1)
		time.Sleep(300 * time.Millisecond) // a slow backend: still answering when the stop comes
	}))
	defer srv.Close()
	log := &actionLog{}
	sub := &fakeSub{log: log}
	for i := range 3 {
		sub.ds = append(sub.ds, &fakeDelivery{msg: wire.EncodeRequest(request(fmt.Sprint("r", i))), log: log})
	}
	br := &fakeBroker{subscribe: func() (broker.Subscription, error) { return sub, nil }}
	p := newTestPool(testBackend(`"`+srv.URL+`"`), br)
	p.drain = 5 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	wait.For(t, 5*time.Second, "all three deliveries in flight", func() bool { return arrived.Load() == 3 })
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	got := log.all()
	if len(got) != 4 || got[3] != "close" {
		t.Fatalf("actions %v, want three acks, then close", got)
	}
	for _, a := range got[:3] {
		if !strings.HasPrefix(a, "ack ") {
			t.Fatalf("actions %v, want three acks, then close", got)
		}
	}
}

// TestStopDrainTimeoutHandsBack: deliveries that outlive the drain time
// — the pool's own, or the stop's deadline (StopBy) when that comes sooner
// — are cut short and handed back before the subscription closes.
func TestStopDrainTimeoutHandsBack(t *testing.T) {
	for _, c := range []struct {
		name   string
		drain  time.Duration
		stopBy time.Duration // 0: none
	}{
		{"drain time", 200 * time.Millisecond, 0},
		{"stop deadline", time.Minute, 200 * time.Millisecond},
	} {
		t.Run(c.name, func(t *testing.T) {
			release := make(chan struct{})
			var arrived atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				arrived.Add(1)
				select {
				case <-release:
				case <-r.Context().Done():
				}
			}))
			defer srv.Close()
			defer close(release)
			log := &actionLog{}
			sub := &fakeSub{log: log, ds: []broker.Delivery{&fakeDelivery{msg: wire.EncodeRequest(request("slow")), log: log}}}
			br := &fakeBroker{subscribe: func() (broker.Subscription, error) { return sub, nil }}
			p := newTestPool(testBackend(`"`+srv.URL+`"`), br)
			p.drain = c.drain
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- p.Run(ctx) }()
			wait.For(t, 5*time.Second, "the delivery in flight", func() bool { return arrived.Load() == 1 })
			start := time.Now()
			if c.stopBy > 0 {
				p.StopBy(start.Add(c.stopBy), start.Add(time.Second))
			}
			cancel()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return")
			}
			if el := time.Since(start); el > time.Second {
				t.Fatalf("stop took %v", el)
			}
			if got := log.all(); fmt.Sprint(got) != "[nack slow close]" {
				t.Fatalf("actions %v, want [nack slow close]", got)
			}
			for _, e := range br.events(t) {
				if e.Status != job.InFlight {
					t.Fatalf("an outcome was published for a cut attempt: %+v", e)
				}
			}
		})
	}
}

func TestDescribeHidesAddresses(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()
	plain := httptest.NewServer(http.NotFoundHandler())
	defer plain.Close()
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}))
	defer hang.Close()
	reset := httptest.NewUnstartedServer(nil)
	reset.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, _ := w.(http.Hijacker).Hijack()
		_ = c.Close()
	})
	reset.Start()
	defer reset.Close()
	cases := []struct {
		name, url string
		want      string
	}{
		{"refused", closedURL, ErrRefused},
		{"dns", "http://no-such-host.invalid/x", ErrDNS},
		{"tls", strings.Replace(plain.URL, "http://", "https://", 1), ErrTLS},
		{"timeout", hang.URL, ErrTimeout},
		{"closed", reset.URL, ErrClosed},
	}
	c := &http.Client{Timeout: 300 * time.Millisecond}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := c.Get(tc.url)
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				t.Fatal("no error")
			}
			if got := describe(err); got != tc.want {
				t.Fatalf("describe(%v) = %q, want %q", err, got, tc.want)
			}
		})
	}
	if got := describe(errors.New("dial tcp 10.1.2.3:80: something new")); got != ErrNetwork {
		t.Fatalf("unknown error: %q", got)
	}
}

// TestResponseTruncationFitsBroker: stored responses of any content stay
// within the encoded bound, so a status event always fits a message.
func TestResponseTruncationFitsBroker(t *testing.T) {
	t.Parallel()
	for name, body := range map[string][]byte{
		"html":     []byte(strings.Repeat("<p>&amp;</p>", 200000)),
		"control":  []byte(strings.Repeat("\x01", job.MaxStoredBody)),
		"quotes":   []byte(strings.Repeat(`"`, job.MaxStoredBody)),
		"binary":   append([]byte{0xff}, make([]byte, job.MaxStoredBody)...),
		"multibyt": []byte(strings.Repeat("é", job.MaxStoredBody)),
	} {
		ev := job.EventFor(request("a"), job.Succeeded, 1)
		cut := len(body) > job.MaxStoredBody
		if cut {
			body = body[:job.MaxStoredBody]
		}
		ev.Response = job.NewResponse(200, http.Header{"Content-Length": {"1"}}, body, cut)
		b := wire.EncodeEvent(ev).Body
		if len(b) > job.MaxEncodedBody+job.MaxStoredHeaders+4096 {
			t.Errorf("%s: event of %d bytes", name, len(b))
		}
		back, err := wire.DecodeEvent(broker.Message{Key: ev.ID, Body: b})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if back.Response.BodyEncoding == "utf8" && strings.Contains(back.Response.Body, "\ufffd") && name != "binary" {
			t.Errorf("%s: truncation split a character", name)
		}
	}
}

// TestSettleDeadLetterEventFails: a dead letter whose failed event cannot
// be written is handed back, so the request's poll does not stay pending;
// its next attempt writes the event.
func TestSettleDeadLetterEventFails(t *testing.T) {
	t.Parallel()
	br := &fakeBroker{publish: func(topic string, _ broker.Message) error {
		if topic == broker.ResultTopic {
			return errDown
		}
		return nil
	}}
	p := newTestPool(testBackend(`"http://127.0.0.1:1"`), br)
	d := &fakeDelivery{msg: wire.EncodeRequest(request("a")), log: &actionLog{}}
	ev := job.EventFor(request("a"), job.Failed, 3)
	ev.DeadLettered = true
	if p.settle(context.Background(), d, ev, broker.DeadLetterTopic("b"), wire.EncodeRequest(request("a"))) {
		t.Fatal("acknowledged a dead letter whose outcome was not stored")
	}
	if d.acks != 0 || d.nacks != 1 {
		t.Fatalf("acks %d nacks %d, want it handed back", d.acks, d.nacks)
	}
}

// pausingSub is a fakeSub that holds messages at the broker (Pauser).
type pausingSub struct {
	fakeSub
	pauses, resumes int
}

func (s *pausingSub) Pause(context.Context) error  { s.log.add("pause"); s.pauses++; return nil }
func (s *pausingSub) Resume(context.Context) error { s.log.add("resume"); s.resumes++; return nil }

// TestPauseHandsBackHeldMessages: a paused backend's subscription that
// holds messages at the broker is paused once (not spun on), and resumed
// when the pause ends.
func TestPauseHandsBackHeldMessages(t *testing.T) {
	t.Parallel()
	log := &actionLog{}
	sub := &pausingSub{fakeSub: fakeSub{log: log}}
	br := &fakeBroker{subscribe: func() (broker.Subscription, error) { return sub, nil }}
	p := newTestPool(testBackend(`"http://127.0.0.1:1"`), br)
	set := p.lim.Settings()
	set.Paused = true
	p.lim.Set(set)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	count := func(action string) int {
		n := 0
		for _, a := range log.all() {
			if a == action {
				n++
			}
		}
		return n
	}
	wait.For(t, 5*time.Second, "the subscription paused", func() bool { return count("pause") > 0 })
	// Paused, the pool holds still: one spinning on the pause would pause
	// the subscription again and again within this window.
	wait.Never(t, 200*time.Millisecond, "the subscription paused again", func() bool { return count("pause") > 1 })
	set.Paused = false
	p.lim.Set(set)
	wait.For(t, 5*time.Second, "the subscription resumed", func() bool { return count("resume") > 0 })
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	if got := log.all(); fmt.Sprint(got) != "[pause resume close]" {
		t.Fatalf("actions %v, want one pause, one resume, then close", got)
	}
}
