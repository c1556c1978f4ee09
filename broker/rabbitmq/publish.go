package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/sluice-gw/sluice/internal/retry"

	"github.com/sluice-gw/sluice/broker"
)

// pubChan is one confirm-mode channel of the publish pool. A publisher
// holds it only while it writes (so confirms of concurrent publishes are
// pipelined), and one goroutine (run) reads its returns and confirms.
type pubChan struct {
	b  *Broker
	l  *link
	ch *amqp.Channel

	mu      sync.Mutex
	waiting map[uint64]*pending // by delivery tag; nil once the channel is gone
	dead    chan struct{}       // closed once the channel is gone
}

// pending is a publish waiting for its confirm.
type pending struct {
	body     int    // body size, to tell which publish a size refusal was for
	returned string // why the server returned it; "" if it was routed
	done     chan error
}

// openPubChan opens a publish channel on l and starts its reader.
func (b *Broker) openPubChan(l *link) (*pubChan, error) {
	ch, err := l.pub.Channel()
	if err != nil {
		return nil, err
	}
	closes := ch.NotifyClose(make(chan *amqp.Error, 1))
	// Both unbuffered and read by one goroutine: the connection's reader
	// hands a basic.return over before it reads the basic.ack that follows
	// it, so run always sees a publish's return before its confirm.
	returns := ch.NotifyReturn(make(chan amqp.Return))
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation))
	if err := ch.Confirm(false); err != nil {
		b.closeChannel(ch)
		return nil, err
	}
	pc := &pubChan{b: b, l: l, ch: ch, waiting: map[uint64]*pending{}, dead: make(chan struct{})}
	if !l.spawn(func() { pc.run(closes, returns, confirms) }) {
		b.closeChannel(ch)
		return nil, broker.ErrClosed
	}
	return pc, nil
}

func (pc *pubChan) isDead() bool {
	select {
	case <-pc.dead:
		return true
	default:
		return false
	}
}

// run settles pending publishes from the channel's returns and confirms
// until the channel is gone, then fails the rest.
func (pc *pubChan) run(closes <-chan *amqp.Error, returns <-chan amqp.Return, confirms <-chan amqp.Confirmation) {
	for {
		select {
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			pc.returned(r)
		case c, ok := <-confirms:
			if !ok {
				var reason *amqp.Error
				select {
				case reason = <-closes: // sent before the listeners close
				default:
				}
				pc.fail(reason)
				return
			}
			pc.confirmed(c)
		}
	}
}

func (pc *pubChan) returned(r amqp.Return) {
	s, _ := r.Headers[hdrSeq].(string)
	tag, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return
	}
	pc.mu.Lock()
	if p := pc.waiting[tag]; p != nil {
		p.returned = fmt.Sprintf("%d %s, queue %s", r.ReplyCode, r.ReplyText, r.RoutingKey)
	}
	pc.mu.Unlock()
	// The queue is gone (someone deleted it): declaring it again makes
	// the next publish land.
	pc.b.askRedeclare()
}

func (pc *pubChan) confirmed(c amqp.Confirmation) {
	pc.mu.Lock()
	p := pc.waiting[c.DeliveryTag]
	delete(pc.waiting, c.DeliveryTag)
	pc.mu.Unlock()
	if p != nil {
		pc.l.inflight.Add(-1)
	}
	switch {
	case p == nil: // unknown: its publish was never written
	case !c.Ack:
		p.done <- fmt.Errorf("%w: refused by the broker (basic.nack)", broker.ErrUnavailable)
	case p.returned != "":
		p.done <- fmt.Errorf("%w: unroutable (%s)", broker.ErrUnavailable, p.returned)
	default:
		p.done <- nil
	}
}

// fail settles the publishes still waiting when the channel closed. The
// server closes a channel when a message is over its max_message_size: that
// publish fails with ErrTooLarge, the others that were waiting with
// ErrUnavailable (each may or may not have landed).
func (pc *pubChan) fail(reason *amqp.Error) {
	pc.mu.Lock()
	waiting := pc.waiting
	pc.waiting = nil
	close(pc.dead)
	pc.mu.Unlock()
	limit, tooLarge := sizeRefusal(reason)
	if tooLarge && limit > 0 {
		pc.l.maxBody.Store(int64(limit))
	}
	var largest *pending
	for _, p := range waiting {
		if largest == nil || p.body > largest.body {
			largest = p
		}
	}
	pc.l.inflight.Add(-int64(len(waiting)))
	for _, p := range waiting {
		// Without the limit in the text, the largest waiting is the one.
		if tooLarge && (limit > 0 && p.body > limit || limit <= 0 && p == largest) {
			p.done <- fmt.Errorf("%w: %s", broker.ErrTooLarge, reason.Reason)
			continue
		}
		if reason != nil {
			p.done <- fmt.Errorf("%w: channel closed before the confirm: %v", broker.ErrUnavailable, reason)
		} else {
			p.done <- fmt.Errorf("%w: channel closed before the confirm", broker.ErrUnavailable)
		}
	}
}

var maxSizeText = regexp.MustCompile(`max(?:imum)? size (\d+)`)

// sizeRefusal reports whether reason is the server refusing a message for
// its size ("PRECONDITION_FAILED - message size 70000 is larger than
// configured max size 65536"), and the limit when the text names it.
func sizeRefusal(reason *amqp.Error) (limit int, ok bool) {
	if reason == nil || reason.Code != amqp.PreconditionFailed {
		return 0, false
	}
	m := maxSizeText.FindStringSubmatch(reason.Reason)
	if m == nil {
		return 0, strings.Contains(strings.ToLower(reason.Reason), "message size")
	}
	n, _ := strconv.Atoi(m[1])
	return n, true
}

// errChannelGone is a publish that found its channel closed before it
// wrote anything: it can go on another channel.
var errChannelGone = errors.New("channel closed")

// send publishes p on pc, registering it before it is written so that its
// return and confirm find it. The publish was counted in l.inflight; it is
// counted out once, here when send fails, else when its answer comes.
func (pc *pubChan) send(ctx context.Context, queue string, p amqp.Publishing) (*pending, error) {
	// The publisher holds pc alone, so the next tag is the one this
	// publish gets. Read it outside pc.mu: the connection's reader holds
	// the lock behind it while it hands confirms to run, which takes pc.mu.
	tag := pc.ch.GetNextPublishSeqNo()
	if p.Headers == nil {
		p.Headers = amqp.Table{}
	}
	p.Headers[hdrSeq] = strconv.FormatUint(tag, 10)
	w := &pending{body: len(p.Body), done: make(chan error, 1)}
	pc.mu.Lock()
	if pc.waiting == nil {
		pc.mu.Unlock()
		pc.l.inflight.Add(-1)
		return nil, errChannelGone
	}
	pc.waiting[tag] = w
	pc.mu.Unlock()
	// Mandatory: a message no queue takes comes back as a basic.return
	// instead of being confirmed and dropped.
	if err := pc.ch.PublishWithContext(ctx, "", queue, true, false, p); err != nil {
		pc.mu.Lock()
		_, mine := pc.waiting[tag] // else fail took it, and counted it out
		delete(pc.waiting, tag)
		pc.mu.Unlock()
		if mine {
			pc.l.inflight.Add(-1)
		}
		return nil, err
	}
	return w, nil
}

// take gets a live channel from l's pool. A dead one found there is
// replaced, so that a channel the server closed (a message over its size
// limit) never shrinks the pool.
func (b *Broker) take(ctx context.Context, l *link) (*pubChan, error) {
	for {
		select {
		case pc := <-l.pool:
			if !pc.isDead() {
				return pc, nil
			}
			b.replace(l)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-l.lost:
			return nil, errors.New("connection lost")
		}
	}
}

// give puts pc back, or a replacement when it died. It never blocks: at
// most PublishChannels channels of l are ever in circulation.
func (b *Broker) give(l *link, pc *pubChan) {
	if pc.isDead() {
		b.replace(l)
		return
	}
	l.pool <- pc
}

// replace opens a channel in place of a dead one, retrying while the
// connection lives.
func (b *Broker) replace(l *link) {
	l.spawn(func() {
		err := retry.Do(l.ctx, retry.Backoff(50*time.Millisecond, 2*time.Second), func() error {
			pc, err := b.openPubChan(l)
			switch {
			case err == nil:
				l.pool <- pc
				return nil
			case errors.Is(err, broker.ErrClosed) || l.pub.IsClosed():
				// Run builds a new pool on the next connection.
				return retry.Permanent(err)
			}
			return err
		})
		if err != nil && l.ctx.Err() == nil && !l.pub.IsClosed() {
			b.opts.Log.Warn().Err(err).Msg("rabbitmq: replace a publish channel")
		}
	})
}

// messageSize is what a message weighs against MaxMessageBytes: its body
// and its headers.
func messageSize(hdr amqp.Table, body []byte) int {
	n := len(body)
	for k, v := range hdr {
		n += len(k)
		if s, ok := v.(string); ok {
			n += len(s)
		}
	}
	return n
}

// Publish sends msg as a persistent message and waits for the broker's
// confirm; confirms of concurrent publishes are pipelined on each channel.
func (b *Broker) Publish(ctx context.Context, topic string, msg broker.Message) error {
	queue, ok := b.queues[topic]
	if !ok {
		return fmt.Errorf("rabbitmq: unknown topic %q", topic)
	}
	hdr := amqp.Table{}
	for k, v := range msg.Headers {
		hdr[k] = v
	}
	hdr[hdrKey] = msg.Key
	if tier, ok := broker.DelayTier(time.Until(msg.NotBefore)); !msg.NotBefore.IsZero() && ok && b.dead[topic] == "" {
		queue = b.delayQueue(tier, topic)
		hdr[hdrNotBefore] = strconv.FormatInt(msg.NotBefore.UnixNano(), 10)
	}
	if size := messageSize(hdr, msg.Body); size > b.opts.MaxMessageBytes {
		return fmt.Errorf("publish %s: %w: %d bytes, the limit is %d", topic, broker.ErrTooLarge, size, b.opts.MaxMessageBytes)
	}
	err := b.publish(ctx, queue, amqp.Publishing{
		Headers: hdr, Body: msg.Body, DeliveryMode: amqp.Persistent, MessageId: msg.Key,
	})
	if err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	return nil
}

// publish sends p to queue through the pool and waits for its confirm.
// Errors wrap broker.ErrUnavailable or broker.ErrTooLarge.
func (b *Broker) publish(ctx context.Context, queue string, p amqp.Publishing) error {
	l := b.current()
	if l == nil {
		return fmt.Errorf("%w: not connected", broker.ErrUnavailable)
	}
	if max := l.maxBody.Load(); max > 0 && int64(len(p.Body)) > max {
		return fmt.Errorf("%w: %d bytes, the server's max_message_size is %d", broker.ErrTooLarge, len(p.Body), max)
	}
	var w *pending
	for {
		if err := l.enter(ctx); err != nil {
			return fmt.Errorf("%w: %v", broker.ErrUnavailable, err)
		}
		pc, err := b.take(ctx, l)
		if err != nil {
			l.inflight.Add(-1)
			return fmt.Errorf("%w: no publish channel: %v", broker.ErrUnavailable, err)
		}
		w, err = pc.send(ctx, queue, p)
		b.give(l, pc)
		if err != nil {
			if errors.Is(err, errChannelGone) {
				continue // closed since it was taken; nothing was written
			}
			return fmt.Errorf("%w: %v", broker.ErrUnavailable, err)
		}
		break
	}
	select {
	case err := <-w.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("%w: not confirmed: %v", broker.ErrUnavailable, ctx.Err())
	}
}
