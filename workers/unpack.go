package workers

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/wire"
)

// Settled reports, for each id, whether its request needs no delivery from
// a batch handed out again: it reached an outcome, or a retry's copy of it
// is queued on its own. An error means it cannot tell (every request is
// delivered).
type Settled func(ctx context.Context, ids []string) ([]bool, error)

// holdLimit is how long unpacked requests may wait in a subscription's
// buffer, their batch unsettled at the broker, before they are queued again
// on their own: a slow backend must not keep a batch out past the broker's
// ack deadline (JetStream's ack wait, RabbitMQ's consumer timeout).
const holdLimit = 30 * time.Second

// unpacking is a subscription that hands out the requests of a batch (a
// message packing several, wire.Pack) one by one. The batch is
// acknowledged once each of its requests is settled; a request handed back
// is queued again on its own (with its delay), so one slow request never
// holds the others back. When the batch itself is handed out again (a
// crash, a lost consumer), the requests already settled are skipped.
type unpacking struct {
	sub     broker.Subscription
	pub     broker.Publisher
	topic   string
	settled Settled
	// packed, when set, learns how many requests each message fetched
	// carried (backlog.Monitor.Packed), so a process with no ingress
	// reports depths in requests too.
	packed func(topic string, requests int)
	log    zerolog.Logger
	within func() time.Duration // how long a settling write may take

	buf []held // fetched, not yet returned by Fetch; oldest first
}

// single is a message that came alone, its conversion kept for the pool.
type single struct {
	broker.Delivery
	m broker.Message
}

func (s single) Message() broker.Message { return s.m }

// held is a delivery waiting in the buffer, and since when.
type held struct {
	d  broker.Delivery
	at time.Time
}

func newUnpacking(sub broker.Subscription, pub broker.Publisher, topic string, settled Settled, log zerolog.Logger, within func() time.Duration) *unpacking {
	return &unpacking{sub: sub, pub: pub, topic: topic, settled: settled, log: log, within: within}
}

// Fetch returns buffered requests first; with none buffered it fetches
// from the broker and unpacks what came, keeping what is past max.
func (u *unpacking) Fetch(ctx context.Context, max int) ([]broker.Delivery, error) {
	if len(u.buf) > 0 && time.Since(u.buf[0].at) > holdLimit {
		u.requeue()
	}
	if len(u.buf) == 0 {
		ds, err := u.sub.Fetch(ctx, max)
		if err != nil {
			return nil, err
		}
		now := time.Now()
		for _, d := range ds {
			m := d.Message() // converted from the broker's form at each call
			if !wire.IsBatch(m) {
				u.buf = append(u.buf, held{single{d, m}, now})
				u.learn(1)
				continue
			}
			parts := u.unpack(d, m)
			for _, p := range parts {
				u.buf = append(u.buf, held{p, now})
			}
		}
		if len(u.buf) == 0 { // all skipped or dropped: nothing to deliver yet
			return nil, nil
		}
	}
	n := min(max, len(u.buf))
	out := make([]broker.Delivery, n)
	for i, h := range u.buf[:n] {
		out[i] = h.d
	}
	clear(u.buf[:n])
	u.buf = u.buf[n:]
	return out, nil
}

// unpack splits d, whose message is m, into its requests; when d may have
// been handed out before, the requests already settled are settled at once.
func (u *unpacking) unpack(d broker.Delivery, m broker.Message) []*part {
	msgs, err := wire.Unpack(m)
	if err != nil {
		u.log.Error().Err(err).Str("key", m.Key).Msg("dropping a malformed batch")
		ctx, cancel := context.WithTimeout(context.Background(), u.within())
		defer cancel()
		if err := d.Ack(ctx); err != nil {
			u.log.Warn().Err(err).Msg("ack of a malformed batch; the broker hands it out again")
		}
		return nil
	}
	u.learn(len(msgs))
	b := &batch{u: u, d: d, left: len(msgs)}
	parts := make([]*part, len(msgs))
	for i, m := range msgs {
		parts[i] = &part{batch: b, msg: m}
	}
	if r, ok := d.(broker.Redeliverer); u.settled == nil || ok && !r.Redelivered() {
		return parts // handed out for the first time: nothing in it is settled
	}
	ids := make([]string, len(msgs))
	for i, m := range msgs {
		ids[i] = m.Headers[wire.HID]
	}
	ctx, cancel := context.WithTimeout(context.Background(), u.within())
	done, err := u.settled(ctx, ids)
	cancel()
	if err != nil {
		u.log.Warn().Err(err).Msg("cannot tell which requests of a batch are settled; delivering each")
		return parts
	}
	out := parts[:0]
	for i, p := range parts {
		if i < len(done) && done[i] {
			_ = p.settle(nil) // the last one acknowledges the batch
			continue
		}
		out = append(out, p)
	}
	return out
}

func (u *unpacking) learn(requests int) {
	if u.packed != nil {
		u.packed(u.topic, requests)
	}
}

// requeue hands the buffered deliveries back: a request of a batch is
// queued again on its own (and settled in its batch), a message that came
// alone goes back to the broker.
func (u *unpacking) requeue() {
	buf := u.buf
	u.buf = nil
	for _, h := range buf {
		ctx, cancel := context.WithTimeout(context.Background(), u.within())
		if err := h.d.Nack(ctx, 0); err != nil {
			u.log.Warn().Err(err).Msg("hand back; the broker hands it out again after its ack deadline")
		}
		cancel()
	}
}

// Close hands the buffered requests back, then closes the subscription.
func (u *unpacking) Close() error {
	u.requeue()
	return u.sub.Close()
}

// Pause queues the buffered requests again on their own (a pause may last
// past the broker's ack deadline), then pauses the subscription if it
// holds messages at the broker.
func (u *unpacking) Pause(ctx context.Context) error {
	u.requeue()
	if p, ok := u.sub.(broker.Pauser); ok {
		return p.Pause(ctx)
	}
	return nil
}

// Resume resumes a subscription Pause paused.
func (u *unpacking) Resume(ctx context.Context) error {
	if p, ok := u.sub.(broker.Pauser); ok {
		return p.Resume(ctx)
	}
	return nil
}

// batch is one batch message and how many of its requests are unsettled.
type batch struct {
	u    *unpacking
	d    broker.Delivery
	mu   sync.Mutex
	left int
	back []broker.Message // handed back: queued again on their own
}

// part is one request of a batch.
type part struct {
	batch *batch
	msg   broker.Message
	once  sync.Once
}

func (p *part) Message() broker.Message { return p.msg }

// Ack settles the request; the batch is acknowledged with its last one.
func (p *part) Ack(context.Context) error { return p.settle(nil) }

// Nack queues the request again on its own, delay from now, once its
// batch is otherwise settled.
func (p *part) Nack(_ context.Context, delay time.Duration) error {
	m := p.msg
	if delay > 0 {
		m.NotBefore = time.Now().Add(delay)
	}
	return p.settle(&m)
}

var errSettledTwice = errors.New("request of a batch settled twice")

func (p *part) settle(back *broker.Message) error {
	err := errSettledTwice
	p.once.Do(func() { err = p.batch.settle(back) })
	return err
}

// settle counts one request settled; the last one settles the batch: it
// queues what was handed back on its own, then acknowledges the batch. If
// that cannot be written, the whole batch is handed back, to come again
// with its settled requests skipped.
func (b *batch) settle(back *broker.Message) error {
	b.mu.Lock()
	if back != nil {
		b.back = append(b.back, *back)
	}
	b.left--
	last := b.left == 0
	b.mu.Unlock()
	if !last {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.u.within())
	defer cancel()
	if err := b.requeue(ctx); err != nil {
		b.u.log.Warn().Err(err).Int("requests", len(b.back)).Msg("requests of a batch not queued again; the batch is handed back")
		return errors.Join(err, b.d.Nack(ctx, time.Second))
	}
	return b.d.Ack(ctx)
}

// requeue writes the requests handed back, each on its own.
func (b *batch) requeue(ctx context.Context) error {
	if len(b.back) == 0 {
		return nil
	}
	errs := make([]error, len(b.back))
	var wg sync.WaitGroup
	for i, m := range b.back {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = b.u.pub.Publish(ctx, b.u.topic, m)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
