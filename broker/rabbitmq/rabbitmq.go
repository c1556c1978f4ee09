package rabbitmq

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sluice-gw/sluice/broker"
)

// Options configure the RabbitMQ broker.
type Options struct {
	URL         string
	QueuePrefix string   // default "sluice."
	Backends    []string // request and dead-letter queues of each
	// PublishChannels is the size of the pool of confirm-mode channels.
	// Default 4.
	PublishChannels int
	// MaxMessageBytes is the server's max_message_size: larger messages
	// fail with broker.ErrTooLarge. Default 16 MiB (RabbitMQ 4.x's).
	MaxMessageBytes int
	// DeliveryLimit is x-delivery-limit of the quorum queues. Default 100.
	DeliveryLimit int
}

const (
	hdrKey       = "sluice-key"
	hdrNotBefore = "sluice-not-before"
)

// Broker is the RabbitMQ broker. It is safe for concurrent use; no AMQP
// channel is ever used by two goroutines at once.
type Broker struct {
	opts    Options
	targets []string        // queues that take delayed messages
	queues  map[string]bool // logical topics

	mu    sync.Mutex
	conn  *amqp.Connection
	up    chan struct{} // closed while connected; replaced on loss
	pool  chan *amqp.Channel
	gen   atomic.Int64 // connection generation
	stop  chan struct{}
	shut  sync.Once
	wg    sync.WaitGroup
	inUse sync.Map // topic -> *atomic.Int64: deliveries held by this process
	acked sync.Map // topic -> *atomic.Int64: acknowledgements by this process
}

var _ broker.Broker = (*Broker)(nil)

// Open starts the connection manager. It returns at once: while RabbitMQ is
// away, publishes fail with broker.ErrUnavailable and subscriptions wait.
// It waits up to ctx for a first connection.
func Open(ctx context.Context, opts Options) (*Broker, error) {
	b := newBroker(opts)
	b.wg.Add(1)
	go b.manage()
	select {
	case <-b.connected():
	case <-ctx.Done():
	}
	return b, nil
}

// newBroker fills defaults and derives the topology of opts.
func newBroker(opts Options) *Broker {
	if opts.QueuePrefix == "" {
		opts.QueuePrefix = "sluice."
	}
	if opts.PublishChannels <= 0 {
		opts.PublishChannels = 4
	}
	b := &Broker{opts: opts, queues: map[string]bool{broker.ResultTopic: true},
		targets: []string{broker.ResultTopic}, up: make(chan struct{}), stop: make(chan struct{})}
	for _, be := range opts.Backends {
		b.queues[broker.RequestTopic(be)] = true
		b.queues[broker.DeadLetterTopic(be)] = true
		b.targets = append(b.targets, broker.RequestTopic(be))
	}
	return b
}

// queueNames lists every queue of the topology: topics, then delay queues.
func (b *Broker) queueNames() []string {
	var out []string
	for topic := range b.queues {
		out = append(out, b.name(topic))
	}
	for _, t := range b.targets {
		for _, d := range broker.DelayTiers {
			out = append(out, b.delayQueue(d, t))
		}
	}
	return out
}

func (b *Broker) name(topic string) string { return b.opts.QueuePrefix + topic }

func (b *Broker) delayQueue(tier time.Duration, topic string) string {
	return b.opts.QueuePrefix + "delay." + tier.String() + "." + topic
}

func (b *Broker) connected() chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.up
}

// manage keeps one connection up: dial with backoff and jitter, declare the
// topology, fill the channel pool, wait for the connection to close, repeat.
func (b *Broker) manage() {
	defer b.wg.Done()
	wait := 100 * time.Millisecond
	for {
		select {
		case <-b.stop:
			return
		default:
		}
		conn, err := amqp.DialConfig(b.opts.URL, amqp.Config{Heartbeat: 5 * time.Second, Locale: "en_US",
			Properties: amqp.Table{"connection_name": "sluice"}})
		if err == nil {
			err = b.setup(conn)
			if err != nil {
				_ = conn.Close()
			}
		}
		if err != nil {
			jitter := time.Duration(rand.Int64N(int64(wait)))
			select {
			case <-b.stop:
				return
			case <-time.After(wait/2 + jitter):
			}
			wait = min(2*wait, 5*time.Second)
			continue
		}
		wait = 100 * time.Millisecond
		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		select {
		case <-b.stop:
			_ = conn.Close()
			return
		case <-closed:
		}
		b.mu.Lock()
		b.conn, b.up = nil, make(chan struct{})
		b.mu.Unlock()
	}
}

func (b *Broker) setup(conn *amqp.Connection) error {
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	for topic := range b.queues {
		if _, err := ch.QueueDeclare(b.name(topic), true, false, false, false,
			amqp.Table{"x-queue-type": "quorum"}); err != nil {
			return fmt.Errorf("declare %s: %w", topic, err)
		}
	}
	for _, t := range b.targets {
		for _, d := range broker.DelayTiers {
			if _, err := ch.QueueDeclare(b.delayQueue(d, t), true, false, false, false, amqp.Table{
				"x-message-ttl":             d.Milliseconds(),
				"x-dead-letter-exchange":    "",
				"x-dead-letter-routing-key": b.name(t),
			}); err != nil {
				return fmt.Errorf("declare delay queue: %w", err)
			}
		}
	}
	pool := make(chan *amqp.Channel, b.opts.PublishChannels)
	for range b.opts.PublishChannels {
		pc, err := conn.Channel()
		if err != nil {
			return err
		}
		if err := pc.Confirm(false); err != nil {
			return err
		}
		pool <- pc
	}
	b.mu.Lock()
	b.conn, b.pool = conn, pool
	b.gen.Add(1)
	close(b.up)
	b.mu.Unlock()
	return nil
}

// Publish sends msg as a persistent message and waits for the broker's
// confirm; confirms of concurrent publishes are pipelined on each channel.
func (b *Broker) Publish(ctx context.Context, topic string, msg broker.Message) error {
	if !b.queues[topic] {
		return fmt.Errorf("rabbitmq: unknown topic %q", topic)
	}
	b.mu.Lock()
	pool := b.pool
	conn := b.conn
	b.mu.Unlock()
	if conn == nil || pool == nil {
		return fmt.Errorf("publish %s: %w: not connected", topic, broker.ErrUnavailable)
	}
	queue := b.name(topic)
	hdr := amqp.Table{hdrKey: msg.Key}
	for k, v := range msg.Headers {
		hdr[k] = v
	}
	if tier, ok := broker.DelayTier(time.Until(msg.NotBefore)); !msg.NotBefore.IsZero() && ok {
		queue = b.delayQueue(tier, topic)
		hdr[hdrNotBefore] = strconv.FormatInt(msg.NotBefore.UnixNano(), 10)
	}
	var ch *amqp.Channel
	select {
	case ch = <-pool:
	case <-ctx.Done():
		return fmt.Errorf("publish %s: %w: %v", topic, broker.ErrUnavailable, ctx.Err())
	}
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, false, false, amqp.Publishing{
		Headers: hdr, Body: msg.Body, DeliveryMode: amqp.Persistent, MessageId: msg.Key,
	})
	if !ch.IsClosed() { // a broken one is dropped: the next connection refills the pool
		pool <- ch
	}
	if err != nil {
		return fmt.Errorf("publish %s: %w: %v", topic, broker.ErrUnavailable, err)
	}
	ok, err := dc.WaitContext(ctx)
	if err != nil || !ok {
		return fmt.Errorf("publish %s: %w: not confirmed (%v)", topic, broker.ErrUnavailable, err)
	}
	return nil
}

func (b *Broker) held(topic string) *atomic.Int64 {
	v, _ := b.inUse.LoadOrStore(topic, new(atomic.Int64))
	return v.(*atomic.Int64)
}

func (b *Broker) ackCount(topic string) *atomic.Int64 {
	v, _ := b.acked.LoadOrStore(topic, new(atomic.Int64))
	return v.(*atomic.Int64)
}

// Subscribe consumes topic's queue, again after every reconnect.
func (b *Broker) Subscribe(_ context.Context, topic string, opts broker.SubscribeOptions) (broker.Subscription, error) {
	if !b.queues[topic] {
		return nil, fmt.Errorf("rabbitmq: unknown topic %q", topic)
	}
	prefetch := opts.Prefetch
	if prefetch <= 0 {
		prefetch = 16
	}
	s := &subscription{b: b, topic: topic, prefetch: prefetch, ch: make(chan *delivery, prefetch),
		closed: make(chan struct{}), done: make(chan struct{})}
	go s.run()
	return s, nil
}

type subscription struct {
	b        *Broker
	topic    string
	prefetch int
	ch       chan *delivery
	closed   chan struct{}
	done     chan struct{}
	once     sync.Once
}

// run (re)opens the consumer channel on every connection.
func (s *subscription) run() {
	defer close(s.done)
	for {
		select {
		case <-s.closed:
			return
		case <-s.b.connected():
		}
		s.b.mu.Lock()
		conn := s.b.conn
		s.b.mu.Unlock()
		if conn == nil {
			continue
		}
		s.consume(conn)
		select {
		case <-s.closed:
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (s *subscription) consume(conn *amqp.Connection) {
	ach, err := conn.Channel()
	if err != nil {
		return
	}
	defer ach.Close()
	if err := ach.Qos(s.prefetch, 0, false); err != nil {
		return
	}
	msgs, err := ach.Consume(s.b.name(s.topic), "", false, false, false, false, nil)
	if err != nil {
		return
	}
	var mu sync.Mutex // acks of this channel, one at a time
	held := s.b.held(s.topic)
	for {
		select {
		case <-s.closed:
			return
		case m, ok := <-msgs:
			if !ok {
				return // channel or connection closed: unacked ones come again
			}
			d := &delivery{s: s, m: m, mu: &mu}
			held.Add(1)
			var rest time.Duration
			if nb, _ := m.Headers[hdrNotBefore].(string); nb != "" {
				if ns, err := strconv.ParseInt(nb, 10, 64); err == nil {
					rest = time.Until(time.Unix(0, ns))
				}
			}
			switch {
			case rest >= broker.DelayTiers[0]: // back early from a tier: on to a smaller one
				_ = d.Nack(context.Background(), rest)
			case rest > time.Millisecond: // less than any tier: hold it here
				go func() {
					select {
					case <-time.After(rest):
						s.hand(d)
					case <-s.closed:
						_ = d.Nack(context.Background(), 0)
					}
				}()
			default:
				if !s.hand(d) {
					return
				}
			}
		}
	}
}

// hand passes d to Fetch; it reports false (and requeues d) when the
// subscription closed meanwhile.
func (s *subscription) hand(d *delivery) bool {
	select {
	case s.ch <- d:
		return true
	case <-s.closed:
		_ = d.Nack(context.Background(), 0)
		return false
	}
}

func (s *subscription) Fetch(ctx context.Context, max int) ([]broker.Delivery, error) {
	var out []broker.Delivery
	select {
	case d := <-s.ch:
		out = append(out, d)
	case <-s.closed:
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

func (s *subscription) Close() error {
	s.once.Do(func() {
		close(s.closed)
		<-s.done // the consumer channel is closed: unacked buffered ones come again
		for {
			select {
			case <-s.ch:
				s.b.held(s.topic).Add(-1)
			default:
				return
			}
		}
	})
	return nil
}

var _ broker.Sharer = (*subscription)(nil)

// Share is 1/n for the n consumers of the queue (one per process): the
// competing consumers split the backend's limits evenly.
func (s *subscription) Share(context.Context) (float64, error) {
	var n int
	err := s.b.withChannel(func(ch *amqp.Channel) error {
		q, err := ch.QueueDeclarePassive(s.b.name(s.topic), true, false, false, false, nil)
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

type delivery struct {
	s       *subscription
	m       amqp.Delivery
	mu      *sync.Mutex
	settled atomic.Bool
}

func (d *delivery) Message() broker.Message {
	msg := broker.Message{Body: d.m.Body, Headers: make(map[string]string, len(d.m.Headers))}
	for k, v := range d.m.Headers {
		s, _ := v.(string)
		switch k {
		case hdrKey:
			msg.Key = s
		case hdrNotBefore:
		default:
			msg.Headers[k] = s
		}
	}
	return msg
}

func (d *delivery) settle() {
	if d.settled.CompareAndSwap(false, true) {
		d.s.b.held(d.s.topic).Add(-1)
	}
}

func (d *delivery) Ack(context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.settle()
	if err := d.m.Ack(false); err != nil {
		return err
	}
	d.s.b.ackCount(d.s.topic).Add(1)
	return nil
}

// Nack requeues at once, or after delay through a delay queue.
func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	if delay <= 0 {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.settle()
		return d.m.Nack(false, true)
	}
	msg := d.Message()
	msg.NotBefore = time.Now().Add(delay)
	if err := d.s.b.Publish(ctx, d.s.topic, msg); err != nil {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.settle()
		return d.m.Nack(false, true)
	}
	return d.Ack(ctx)
}

// withChannel runs f on a fresh channel of the current connection.
func (b *Broker) withChannel(f func(*amqp.Channel) error) error {
	b.mu.Lock()
	conn := b.conn
	b.mu.Unlock()
	if conn == nil {
		return broker.ErrUnavailable
	}
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("%w: %v", broker.ErrUnavailable, err)
	}
	defer ch.Close() // unacked gets are requeued
	return f(ch)
}

// Stats counts the queue's ready messages (and its delayed ones) plus the
// deliveries this process holds. AMQP does not tell how many a queue has
// delivered in all, so Consumed counts this process's acknowledgements.
func (b *Broker) Stats(_ context.Context, topic string) (broker.QueueStats, error) {
	var st broker.QueueStats
	err := b.withChannel(func(ch *amqp.Channel) error {
		names := []string{b.name(topic)}
		if slices.Contains(b.targets, topic) {
			for _, d := range broker.DelayTiers {
				names = append(names, b.delayQueue(d, topic))
			}
		}
		for _, n := range names {
			q, err := ch.QueueDeclarePassive(n, true, false, false, false, nil)
			if err != nil {
				return err
			}
			st.Depth += int64(q.Messages)
		}
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("stats %s: %w", topic, err)
	}
	st.Depth += b.held(topic).Load()
	st.Consumed = b.ackCount(topic).Load()
	return st, nil
}

// ListDead reads up to limit dead letters and leaves them in the queue.
func (b *Broker) ListDead(_ context.Context, topic string, limit int) ([]broker.DeadLetter, error) {
	var out []broker.DeadLetter
	err := b.withChannel(func(ch *amqp.Channel) error {
		for limit <= 0 || len(out) < limit {
			m, ok, err := ch.Get(b.name(topic), false)
			if err != nil || !ok {
				return err
			}
			out = append(out, broker.DeadLetter{Message: (&delivery{m: m}).Message()})
		}
		return nil
	})
	return out, err
}

// TakeDead is not there yet.
func (b *Broker) TakeDead(_ context.Context, topic string, pos []string) error {
	return fmt.Errorf("take %s: not implemented", topic)
}

// Ping reports whether a connection is up.
func (b *Broker) Ping(context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn == nil || b.conn.IsClosed() {
		return broker.ErrUnavailable
	}
	return nil
}

// Close stops reconnecting and closes the connection.
func (b *Broker) Close() error {
	b.shut.Do(func() { close(b.stop) })
	b.wg.Wait()
	return nil
}

// DeleteQueues removes every queue a broker with opts declares: request,
// result, dead-letter and delay queues. For tearing a deployment down (and
// for tests); it deletes queued messages with them.
func DeleteQueues(opts Options) error {
	b := newBroker(opts)
	conn, err := amqp.Dial(b.opts.URL)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	for _, q := range b.queueNames() {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			return err
		}
	}
	return nil
}
