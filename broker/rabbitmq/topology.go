package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sluice-gw/sluice/broker"
)

// decl is one queue of the topology and the arguments sluice declares it
// with.
type decl struct {
	name string
	args amqp.Table
}

// requestArgs are a request queue's arguments. x-delivery-limit counts the
// times a message went back to the queue without being settled (a consumer
// that died or closed holding it, a Nack without delay): a poison message
// that crashes its worker comes back at most DeliveryLimit times, then the
// queue dead-letters it into the backend's dead-letter stream, where it is
// listed and replayed like any dead letter. Retries with a delay do not
// count: they are new copies. The at-least-once strategy keeps the message
// in the queue until the stream confirmed it (it needs reject-publish
// overflow; the queues have no length limit, so nothing is ever rejected).
// The limit is always positive: RabbitMQ 3.x reads a negative one as 0,
// dropping every message after its first delivery.
func (b *Broker) requestArgs(backend string) amqp.Table {
	return amqp.Table{
		"x-queue-type":              "quorum",
		"x-delivery-limit":          int64(b.opts.DeliveryLimit),
		"x-dead-letter-exchange":    "",
		"x-dead-letter-routing-key": b.deadStream(backend),
		"x-dead-letter-strategy":    "at-least-once",
		"x-overflow":                "reject-publish",
	}
}

// decls lists what Open declares, in order: a dead-letter stream before
// the request queue that dead-letters into it, delay queues after the
// queues they feed.
//
// The results queue has a delivery limit and no dead-letter route: a status
// event that the collector hands back DeliveryLimit times (it crashes on
// it) is dropped rather than stop every event behind it; the request it
// describes keeps its last stored status until results.ttl.
//
// Delay queues are quorum queues, so a held-back message survives the loss
// of a node like any other: each holds messages for one tier (x-message-ttl)
// and dead-letters them at least once to the queue they wait for.
func (b *Broker) decls() []decl {
	var out []decl
	for _, be := range b.opts.Backends {
		out = append(out,
			decl{b.deadStream(be), amqp.Table{"x-queue-type": "stream"}},
			decl{b.name(broker.RequestTopic(be)), b.requestArgs(be)})
	}
	out = append(out, decl{b.name(broker.ResultTopic), amqp.Table{
		"x-queue-type":     "quorum",
		"x-delivery-limit": int64(b.opts.DeliveryLimit),
	}})
	for _, t := range b.targets {
		for _, d := range broker.DelayTiers {
			out = append(out, decl{b.delayQueue(d, t), amqp.Table{
				"x-queue-type":              "quorum",
				"x-delivery-limit":          int64(b.opts.DeliveryLimit),
				"x-message-ttl":             d.Milliseconds(),
				"x-dead-letter-exchange":    "",
				"x-dead-letter-routing-key": b.name(t),
				"x-dead-letter-strategy":    "at-least-once",
				"x-overflow":                "reject-publish",
			}})
		}
	}
	return out
}

func (b *Broker) name(topic string) string { return b.opts.QueuePrefix + topic }

// deadStream is the stream holding backend's dead letters. It has a name of
// its own because earlier versions kept dead letters in a quorum queue named
// after the topic, and a queue cannot change its type.
func (b *Broker) deadStream(backend string) string {
	return b.opts.QueuePrefix + "dlq-stream." + backend
}

// delayQueue is the quorum queue of one delay tier of topic. Earlier
// versions used classic queues named by legacyDelayQueue.
func (b *Broker) delayQueue(tier time.Duration, topic string) string {
	return b.opts.QueuePrefix + "delay-quorum." + tier.String() + "." + topic
}

// legacyDelayQueue is a classic delay queue of earlier versions.
func (b *Broker) legacyDelayQueue(tier time.Duration, topic string) string {
	return b.opts.QueuePrefix + "delay." + tier.String() + "." + topic
}

// legacyDeadQueue is the quorum dead-letter queue of earlier versions.
func (b *Broker) legacyDeadQueue(backend string) string {
	return b.opts.QueuePrefix + broker.DeadLetterTopic(backend)
}

// queueNames lists every queue a broker with these options declares or
// retires, for DeleteQueues.
func (b *Broker) queueNames() []string {
	var out []string
	for _, d := range b.decls() {
		out = append(out, d.name)
	}
	for _, be := range b.opts.Backends {
		out = append(out, b.legacyDeadQueue(be))
	}
	for _, t := range b.targets {
		for _, d := range broker.DelayTiers {
			out = append(out, b.legacyDelayQueue(d, t))
		}
	}
	return out
}

// declare declares the topology on conn. A queue that exists with other
// arguments (declared by an earlier version, or with another delivery
// limit) cannot be redeclared: sluice keeps using it as it is and says what
// it lacks, since deleting it would delete its messages.
func (b *Broker) declare(conn *amqp.Connection) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("declare: %w", err)
	}
	defer func() { _ = ch.Close() }()
	for _, d := range b.decls() {
		_, err := ch.QueueDeclare(d.name, true, false, false, false, d.args)
		if err == nil {
			continue
		}
		var ae *amqp.Error
		if !errors.As(err, &ae) || ae.Code != amqp.PreconditionFailed || d.args["x-queue-type"] == "stream" {
			return fmt.Errorf("declare %s: %w", d.name, err)
		}
		// The refusal closed the channel.
		if ch, err = conn.Channel(); err != nil {
			return fmt.Errorf("declare %s: %w", d.name, err)
		}
		if _, perr := ch.QueueDeclarePassive(d.name, true, false, false, false, nil); perr != nil {
			return fmt.Errorf("declare %s: %w", d.name, err)
		}
		b.warnOnce(d.name, "rabbitmq: queue %s exists with other arguments than sluice declares (%s); "+
			"sluice uses it as it is. Apply them with a policy, e.g. rabbitmqctl set_policy %s '%s' '%s' "+
			"--apply-to queues, or drain and delete the queue so sluice declares it again",
			d.name, ae.Reason, d.name, "^"+regexp.QuoteMeta(d.name)+"$", policyOf(d.args))
	}
	return nil
}

// policyOf writes args as a policy definition.
func policyOf(args amqp.Table) string {
	var parts []string
	for _, k := range []string{"x-delivery-limit", "x-dead-letter-exchange",
		"x-dead-letter-routing-key", "x-dead-letter-strategy", "x-overflow"} {
		v, ok := args[k]
		if !ok {
			continue
		}
		key := strings.TrimPrefix(k, "x-")
		if s, ok := v.(string); ok {
			parts = append(parts, fmt.Sprintf("%q:%q", key, s))
		} else {
			parts = append(parts, fmt.Sprintf("%q:%v", key, v))
		}
	}
	return "{" + strings.Join(parts, ",") + "}"
}

// retireLegacy moves what earlier versions left behind into the topology
// of this one: classic delay queues are deleted once empty (until then they
// keep forwarding their messages by TTL to the unchanged request and result
// queues), and the quorum dead-letter queues are moved into the streams.
// What cannot be done now is logged and tried again on the next connection.
//
// It works on a connection of its own: some refusals close the whole
// connection (a queue.delete with if-empty on a queue that turned out to be
// a quorum queue), which must not take the broker's down with it.
func (b *Broker) retireLegacy() {
	conn, err := dial(b.opts.URL, "sluice-upgrade")
	if err != nil {
		b.logf("rabbitmq: retiring old queues: %v", err)
		return
	}
	defer func() { _ = conn.CloseDeadline(time.Now().Add(5 * time.Second)) }()
	draining := map[string]bool{}
	ch, err := conn.Channel()
	if err != nil {
		b.logf("rabbitmq: retiring old delay queues: %v", err)
		return
	}
	for _, t := range b.targets {
		for _, d := range broker.DelayTiers {
			q := b.legacyDelayQueue(d, t)
			// Deleting an absent queue succeeds: one round trip when there
			// is nothing to retire.
			if _, err := ch.QueueDelete(q, false, true, false); err == nil {
				continue
			}
			draining[q] = true // not empty: the refusal closed the channel
			if ch, err = conn.Channel(); err != nil {
				b.logf("rabbitmq: retiring old delay queues: %v", err)
				return
			}
		}
	}
	_ = ch.Close()
	b.mu.Lock()
	b.legacyDelay = draining
	b.mu.Unlock()
	for _, be := range b.opts.Backends {
		if err := b.migrateDead(conn, be); err != nil {
			b.logf("rabbitmq: moving the dead letters of %s into %s (tried again on the next connection): %v",
				b.legacyDeadQueue(be), b.deadStream(be), err)
		}
	}
}

// migrateBatch is how many old dead letters move per round of confirms.
const migrateBatch = 256

// migrateDead moves the messages of backend's old dead-letter queue into its
// stream, then deletes the queue. Each message is acknowledged only after
// the stream confirmed its copy, so a failure leaves it in the old queue
// (to be moved again, never lost); a crash in between copies it twice.
//
// The delete cannot ask for an empty queue (quorum queues answer if-empty
// with NOT_IMPLEMENTED, which closes the connection), so it follows a check
// that the queue is empty. A message an earlier version dead-letters in the
// moment between would be lost with the queue, as would any that version
// publishes after it: upgrade by stopping the earlier version's processes
// first.
func (b *Broker) migrateDead(conn *amqp.Connection, backend string) error {
	old, stream := b.legacyDeadQueue(backend), b.deadStream(backend)
	probe, err := conn.Channel()
	if err != nil {
		return err
	}
	if _, err := probe.QueueDeclarePassive(old, true, false, false, false, nil); err != nil {
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.NotFound {
			return nil // nothing to move; the refusal closed the channel
		}
		return err
	}
	_ = probe.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer func() { _ = ch.Close() }()
	if err := ch.Confirm(false); err != nil {
		return err
	}
	// One batch at most is in flight, so the buffer never fills and never
	// holds up the connection's reader.
	returns := ch.NotifyReturn(make(chan amqp.Return, migrateBatch))
	moved := 0
	for {
		n, err := moveBatch(ch, old, stream, returns)
		if err != nil {
			return fmt.Errorf("%d moved, then: %w", moved, err)
		}
		moved += n
		if n > 0 {
			continue
		}
		q, err := ch.QueueDeclarePassive(old, true, false, false, false, nil)
		if err != nil {
			return fmt.Errorf("%d moved, then: %w", moved, err)
		}
		if q.Messages > 0 {
			continue // one arrived meanwhile
		}
		if _, err := ch.QueueDelete(old, false, false, false); err != nil {
			return fmt.Errorf("%d moved, then: %w", moved, err)
		}
		b.logf("rabbitmq: moved %d dead letters from %s into %s and deleted the old queue", moved, old, stream)
		return nil
	}
}

// moveBatch copies up to migrateBatch messages of old into stream and
// acknowledges them once the stream confirmed every copy. It returns how
// many it moved: 0 when old is empty.
func moveBatch(ch *amqp.Channel, old, stream string, returns <-chan amqp.Return) (int, error) {
	var last uint64
	var confirms []*amqp.DeferredConfirmation
	for len(confirms) < migrateBatch {
		m, ok, err := ch.Get(old, false)
		if err != nil {
			return 0, err
		}
		if !ok {
			break
		}
		hdr := amqp.Table{}
		for k, v := range m.Headers {
			if k != "x-delivery-count" { // counted the old queue's listings
				hdr[k] = v
			}
		}
		dc, err := ch.PublishWithDeferredConfirm("", stream, true, false, amqp.Publishing{
			Headers: hdr, Body: m.Body, DeliveryMode: amqp.Persistent, MessageId: m.MessageId,
			ContentType: m.ContentType, Timestamp: m.Timestamp,
		})
		if err != nil {
			return 0, err
		}
		confirms = append(confirms, dc)
		last = m.DeliveryTag
	}
	if len(confirms) == 0 {
		return 0, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, dc := range confirms {
		if ok, err := dc.WaitContext(ctx); err != nil || !ok {
			return 0, fmt.Errorf("copy not confirmed by %s (%v)", stream, err)
		}
	}
	select {
	case r := <-returns:
		return 0, fmt.Errorf("copy returned by %s: %d %s", stream, r.ReplyCode, r.ReplyText)
	default:
	}
	if err := ch.Ack(last, true); err != nil {
		return 0, err
	}
	return len(confirms), nil
}
