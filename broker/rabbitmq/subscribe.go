package rabbitmq

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/sluice-gw/sluice/internal/retry"

	"github.com/sluice-gw/sluice/broker"
)

// Subscribe consumes topic's queue, again after every reconnect. The
// subscription's goroutine belongs to the broker as well: it ends with
// Close of either.
func (b *Broker) Subscribe(_ context.Context, topic string, opts broker.SubscribeOptions) (broker.Subscription, error) {
	queue, ok := b.queues[topic]
	if !ok {
		return nil, fmt.Errorf("rabbitmq: unknown topic %q", topic)
	}
	if b.dead[topic] != "" {
		return nil, fmt.Errorf("rabbitmq: %s is a dead-letter stream: read it with ListDead", topic)
	}
	prefetch := opts.Prefetch
	if prefetch <= 0 {
		prefetch = 16
	}
	s := &subscription{b: b, topic: topic, queue: queue, prefetch: prefetch,
		ch: make(chan *delivery, prefetch), closed: make(chan struct{}), done: make(chan struct{}),
		changed: make(chan struct{})}
	if !b.spawn(s.run) {
		return nil, broker.ErrClosed
	}
	return s, nil
}

type subscription struct {
	b        *Broker
	topic    string
	queue    string
	prefetch int
	ch       chan *delivery // handed out by Fetch; never closed
	closed   chan struct{}
	done     chan struct{} // closed when run returned
	once     sync.Once

	pmu       sync.Mutex
	paused    bool
	changed   chan struct{} // closed and replaced when paused changes
	consuming chan struct{} // closed when the consume under way returns; nil when none
}

var _ broker.Pauser = (*subscription)(nil)

// Pause closes the consumer channel, which hands back what it buffered or
// held back (one delivery each on the queue's count), and consumes nothing
// until Resume: a paused backend's messages wait in the queue, not
// unsettled in this consumer, where every consumer timeout would hand
// them back again. The caller has settled what Fetch returned: it would go
// back to the queue too.
func (s *subscription) Pause(ctx context.Context) error {
	s.pmu.Lock()
	if !s.paused {
		s.paused = true
		close(s.changed)
		s.changed = make(chan struct{})
	}
	done := s.consuming
	s.pmu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Resume consumes again after Pause.
func (s *subscription) Resume(context.Context) error {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	if s.paused {
		s.paused = false
		close(s.changed)
		s.changed = make(chan struct{})
	}
	return nil
}

// run (re)opens the consumer channel on every connection, while not
// paused, until the subscription or the broker closes. A consume that
// fails at once is tried again with backoff.
func (s *subscription) run() {
	defer close(s.done)
	again := retry.Backoff(100*time.Millisecond, 2*time.Second)
	for {
		s.pmu.Lock()
		paused, changed := s.paused, s.changed
		s.pmu.Unlock()
		var up <-chan struct{} // paused: nil, waiting only for a change
		if !paused {
			up = s.b.connected()
		}
		select {
		case <-s.closed:
			return
		case <-s.b.stop:
			return
		case <-changed:
			continue
		case <-up:
		}
		if l := s.b.current(); l != nil {
			s.pmu.Lock()
			done := make(chan struct{})
			s.consuming, changed, paused = done, s.changed, s.paused
			s.pmu.Unlock()
			if !paused && s.consume(l, changed) {
				again.Reset()
			}
			s.pmu.Lock()
			s.consuming = nil
			s.pmu.Unlock()
			close(done)
		}
		t := time.NewTimer(again.NextBackOff())
		select {
		case <-s.closed:
			t.Stop()
			return
		case <-s.b.stop:
			t.Stop()
			return
		case <-changed:
			t.Stop()
		case <-t.C:
		}
	}
}

// consumer is one consumer channel and the deliveries it holds back.
type consumer struct {
	s   *subscription
	ach *amqp.Channel
	mu  sync.Mutex // settles on ach, one at a time
	// moving gets back the deliveries whose move to a smaller delay tier
	// failed; buffered for every delivery the channel can hold, so a mover
	// never blocks.
	moving chan failedMove
	held   holdQueue

	omu sync.Mutex
	out map[*delivery]bool // received and not settled yet
}

// consume delivers from one consumer channel until it breaks or the
// subscription closes; it reports whether it consumed at all. It owns
// everything it starts: the movers it starts are waited for, and the
// deliveries it holds back or buffered go back to the queue with the
// channel.
func (s *subscription) consume(l *link, pause <-chan struct{}) bool {
	log := s.b.opts.Log.With().Str("topic", s.topic).Logger()
	ach, err := l.sub.Channel()
	if err != nil {
		log.Debug().Err(err).Msg("rabbitmq: open a consumer channel (retrying)")
		return false
	}
	defer s.b.closeChannel(ach) // last: unsettled deliveries go back to the queue
	if err := ach.Qos(s.prefetch, 0, false); err != nil {
		log.Debug().Err(err).Msg("rabbitmq: set the prefetch (retrying)")
		return false
	}
	msgs, err := ach.Consume(s.queue, "", false, false, false, false, nil)
	if err != nil {
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.NotFound {
			s.b.askRedeclare()
		}
		log.Debug().Err(err).Msg("rabbitmq: consume (retrying)")
		return false
	}
	c := &consumer{s: s, ach: ach, moving: make(chan failedMove, s.prefetch), out: map[*delivery]bool{}}
	ctx, cancel := context.WithCancel(context.Background())
	var movers sync.WaitGroup
	defer func() {
		cancel()
		movers.Wait()
		s.drain()
		// Whatever this channel delivered and nobody settled (held back,
		// buffered, or fetched and still in a caller's hands) goes back to
		// the queue with the channel: this process holds it no more.
		c.omu.Lock()
		left := make([]*delivery, 0, len(c.out))
		for d := range c.out {
			left = append(left, d)
		}
		c.omu.Unlock()
		for _, d := range left {
			d.settle()
		}
	}()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		var due <-chan time.Time
		if len(c.held) > 0 {
			timer.Reset(time.Until(c.held[0].at))
			due = timer.C
		}
		select {
		case <-s.closed:
			return true
		case <-pause:
			return true // the channel closes: what it holds goes back to the queue
		case m, ok := <-msgs:
			if !ok {
				return true // channel or connection closed: unacked ones come again
			}
			d := &delivery{c: c, m: m}
			s.b.held(s.topic).Add(1)
			c.omu.Lock()
			c.out[d] = true
			c.omu.Unlock()
			if !c.route(ctx, &movers, d) {
				return true
			}
		case f := <-c.moving:
			if errors.Is(f.err, broker.ErrTooLarge) {
				// It fit when it was accepted but the server's limit is
				// lower now: no tier takes it, so it is due early.
				if !s.hand(f.d) {
					return true
				}
				continue
			}
			// Publishing is blocked or down: keep it here and try again
			// shortly, rather than hand it back to the queue, which would
			// count against its delivery limit.
			s.b.movesFailed.Add(1)
			heap.Push(&c.held, hold{d: f.d, at: time.Now().Add(time.Second)})
		case <-due:
			for len(c.held) > 0 && !c.held[0].at.After(time.Now()) {
				d := heap.Pop(&c.held).(hold).d
				if !c.route(ctx, &movers, d) {
					return true
				}
			}
		}
	}
}

// route sends d where its not-before time says: on to a smaller delay tier
// when it came back early from one, held here when it is due within the
// smallest tier, else to Fetch. It reports false when the subscription
// closed.
func (c *consumer) route(ctx context.Context, movers *sync.WaitGroup, d *delivery) bool {
	nb := d.notBefore()
	rest := time.Until(nb)
	switch {
	case rest >= broker.DelayTiers[0]:
		movers.Add(1)
		go func() {
			defer movers.Done()
			if err := d.moveOn(ctx, nb); err != nil {
				c.moving <- failedMove{d, err}
			}
		}()
	case rest > time.Millisecond:
		heap.Push(&c.held, hold{d: d, at: nb})
	default:
		return c.s.hand(d)
	}
	return true
}

// hand passes d to Fetch; it reports false when the subscription closed
// meanwhile (d goes back to the queue with the channel).
func (s *subscription) hand(d *delivery) bool {
	select {
	case s.ch <- d:
		return true
	case <-s.closed:
		d.settle()
		return false
	}
}

// drain drops the buffered deliveries: their channel is closing, which
// hands them back to the queue.
func (s *subscription) drain() {
	for {
		select {
		case d := <-s.ch:
			d.settle()
		default:
			return
		}
	}
}

func (s *subscription) Fetch(ctx context.Context, max int) ([]broker.Delivery, error) {
	var out []broker.Delivery
	select {
	case d := <-s.ch:
		out = append(out, d)
	case <-s.closed:
		return nil, broker.ErrClosed
	case <-s.b.stop:
		return nil, broker.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	for len(out) < max {
		select {
		case d := <-s.ch:
			out = append(out, d)
		default:
			return out, nil
		}
	}
	return out, nil
}

// Close stops fetching and waits for the consumer to stop; the messages
// it buffered or held back go back to the queue at once, with its channel.
// Deliveries settled before Close stay settled.
func (s *subscription) Close() error {
	s.once.Do(func() {
		close(s.closed)
		<-s.done
		s.drain()
	})
	return nil
}

var _ broker.Sharer = (*subscription)(nil)

// Share is 1/n for the n consumers of the queue (one per process): the
// competing consumers split the backend's limits evenly.
func (s *subscription) Share(context.Context) (float64, error) {
	var n int
	err := s.b.withChannel(func(ch *amqp.Channel) error {
		q, err := ch.QueueDeclarePassive(s.queue, true, false, false, false, nil)
		n = q.Consumers
		return err
	})
	if err != nil {
		return 0, err
	}
	if n < 1 {
		return 0, fmt.Errorf("no consumers on %s yet", s.topic)
	}
	return 1 / float64(n), nil
}

// failedMove is a delivery whose move to a smaller tier failed, and why.
type failedMove struct {
	d   *delivery
	err error
}

// hold is a delivery waiting in the consumer until at.
type hold struct {
	d  *delivery
	at time.Time
}

// holdQueue is a min-heap of holds by time.
type holdQueue []hold

func (q holdQueue) Len() int           { return len(q) }
func (q holdQueue) Less(i, j int) bool { return q[i].at.Before(q[j].at) }
func (q holdQueue) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *holdQueue) Push(x any)        { *q = append(*q, x.(hold)) }
func (q *holdQueue) Pop() any {
	old := *q
	h := old[len(old)-1]
	*q = old[:len(old)-1]
	return h
}

type delivery struct {
	c       *consumer
	m       amqp.Delivery
	settled atomic.Bool
}

func (d *delivery) Message() broker.Message { return toMessage(d.m.Headers, d.m.Body) }

// Redelivered reports AMQP's redelivered flag: the message was handed out
// before (a consumer died or handed it back).
func (d *delivery) Redelivered() bool { return d.m.Redelivered }

// toMessage turns an AMQP message back into what was published: the key
// out of its header, without sluice's routing headers and without those
// RabbitMQ adds (x-death, x-delivery-count, x-stream-offset are not
// strings; x-first-death-* are).
func toMessage(h amqp.Table, body []byte) broker.Message {
	msg := broker.Message{Body: body, Headers: make(map[string]string, len(h))}
	for k, v := range h {
		s, ok := v.(string)
		switch {
		case !ok:
		case k == hdrKey:
			msg.Key = s
		case k == hdrNotBefore, k == hdrSeq, k == hdrMark, k == hdrFence,
			strings.HasPrefix(k, "x-first-death-"), strings.HasPrefix(k, "x-last-death-"):
		default:
			msg.Headers[k] = s
		}
	}
	return msg
}

func (d *delivery) notBefore() time.Time {
	nb, _ := d.m.Headers[hdrNotBefore].(string)
	ns, err := strconv.ParseInt(nb, 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// settle ends this process's hold of d, once.
func (d *delivery) settle() {
	if d.settled.CompareAndSwap(false, true) {
		d.c.s.b.held(d.c.s.topic).Add(-1)
		d.c.omu.Lock()
		delete(d.c.out, d)
		d.c.omu.Unlock()
	}
}

func (d *delivery) Ack(context.Context) error {
	d.c.mu.Lock()
	defer d.c.mu.Unlock()
	d.settle()
	if err := d.m.Ack(false); err != nil {
		return fmt.Errorf("ack: %w: %v", broker.ErrUnavailable, err)
	}
	d.c.s.b.ackCount(d.c.s.topic).Add(1)
	return nil
}

// Nack requeues at once, or after delay through a delay queue. A copy that
// cannot be written within settleTimeout (or ctx) is requeued at once
// instead: early, but never lost.
func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	if delay > 0 {
		if err := d.moveOn(ctx, time.Now().Add(delay)); err == nil {
			return nil
		}
	}
	d.c.mu.Lock()
	defer d.c.mu.Unlock()
	d.settle()
	if err := d.m.Nack(false, true); err != nil {
		return fmt.Errorf("nack: %w: %v", broker.ErrUnavailable, err)
	}
	return nil
}

// moveOn writes a copy of d to be delivered at nb, then acknowledges d.
// The publish is bounded by settleTimeout whatever ctx is: a consumer
// never waits forever on a blocked or lost publishing connection.
func (d *delivery) moveOn(ctx context.Context, nb time.Time) error {
	if d.c.ach.IsClosed() {
		return fmt.Errorf("%w: its channel closed; the queue hands it out again", broker.ErrUnavailable)
	}
	ctx, cancel := context.WithTimeout(ctx, d.c.s.b.timeout)
	defer cancel()
	msg := d.Message()
	msg.NotBefore = nb
	if err := d.c.s.b.Publish(ctx, d.c.s.topic, msg); err != nil {
		return err
	}
	return d.Ack(ctx)
}
