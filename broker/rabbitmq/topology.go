package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/sluice-gw/sluice/internal/retry"

	"github.com/sluice-gw/sluice/broker"
)

// decl is one queue of the topology and the arguments sluice declares it
// with.
type decl struct {
	name string
	args amqp.Table
	kind declKind
	// target is the queue a delay queue dead-letters to.
	target string
}

// declKind says how a queue found with other arguments than its decl's is
// migrated to them (see migrate).
type declKind int

const (
	// kindStream is a dead-letter stream: never migrated (a queue of
	// another type there is an error).
	kindStream declKind = iota
	// kindQueue is a request or the results queue: its messages move to a
	// temporary queue and back.
	kindQueue
	// kindDelay is a delay queue: its messages move early into the queue
	// it feeds, whose consumers send each on to the tier its time needs.
	kindDelay
)

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

// unlimited adds to a quorum queue's args what makes it keep a message
// however often it is handed back, on a server of the given major version:
// x-delivery-limit -1 on RabbitMQ 4.0 and later, whose quorum queues
// otherwise drop a message at its 20th hand-back; nothing on 3.x, which
// has no default limit and reads a negative one as 0 (drop at the first
// hand-back). An unknown version (0) is taken for 3.x, the lesser harm.
func unlimited(major int, args amqp.Table) amqp.Table {
	if major >= 4 {
		args["x-delivery-limit"] = int64(-1)
	}
	return args
}

// serverMajor is the major version RabbitMQ announced in a connection's
// server properties, 0 when it announced none that reads as one.
func serverMajor(props amqp.Table) int {
	v, _ := props["version"].(string)
	major, _, _ := strings.Cut(v, ".")
	n, err := strconv.Atoi(major)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// decls lists what Open declares on a server of the given major version,
// in order: a dead-letter stream before the request queue that
// dead-letters into it, delay queues after the queues they feed.
//
// The results queue has no delivery limit, explicitly on every version
// (see unlimited): a status event dropped after some hand-backs would
// leave its request's poll pending forever, and the collector hands events
// back whenever it stops or loses its connection holding some.
//
// Delay queues are quorum queues, so a held-back message survives the loss
// of a node like any other: each holds messages for one tier (x-message-ttl)
// and dead-letters them at least once to the queue they wait for. Nobody
// consumes them, so they need no delivery limit; having none, they do not
// have to be migrated when DeliveryLimit changes.
func (b *Broker) decls(major int) []decl {
	var out []decl
	for _, be := range b.opts.Backends {
		out = append(out,
			decl{name: b.deadStream(be), args: amqp.Table{"x-queue-type": "stream"}, kind: kindStream},
			decl{name: b.name(broker.RequestTopic(be)), args: b.requestArgs(be), kind: kindQueue})
	}
	out = append(out, decl{name: b.name(broker.ResultTopic), kind: kindQueue,
		args: unlimited(major, amqp.Table{"x-queue-type": "quorum"})})
	for _, t := range b.targets {
		for _, d := range broker.DelayTiers {
			out = append(out, decl{name: b.delayQueue(d, t), kind: kindDelay, target: b.name(t),
				args: unlimited(major, amqp.Table{
					"x-queue-type":              "quorum",
					"x-message-ttl":             d.Milliseconds(),
					"x-dead-letter-exchange":    "",
					"x-dead-letter-routing-key": b.name(t),
					"x-dead-letter-strategy":    "at-least-once",
					"x-overflow":                "reject-publish",
				})})
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

// migratingQueue holds the messages of queue while it is declared again
// with today's arguments.
func migratingQueue(queue string) string { return queue + ".migrating" }

// lockQueue is the exclusive queue whose owner may migrate queues.
func (b *Broker) lockQueue() string { return b.opts.QueuePrefix + "upgrade-lock" }

// legacyDeadQueue is the quorum dead-letter queue of earlier versions.
func (b *Broker) legacyDeadQueue(backend string) string {
	return b.opts.QueuePrefix + broker.DeadLetterTopic(backend)
}

// queueNames lists every queue a broker with these options declares or
// retires, for DeleteQueues.
func (b *Broker) queueNames() []string {
	var out []string
	for _, d := range b.decls(0) {
		out = append(out, d.name)
		if d.kind == kindQueue {
			out = append(out, migratingQueue(d.name))
		}
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

// refusal is a queue that exists with other arguments than its decl's.
type refusal struct {
	decl
	reason string // the server's, naming the first argument that differs
}

// declare declares the topology on conn. A queue that exists with other
// arguments (declared by an earlier version, with another delivery limit or
// on another RabbitMQ version) cannot be declared again: it is returned
// among the refusals, to be migrated, and used as it is until then.
func (b *Broker) declare(conn *amqp.Connection) ([]refusal, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("declare: %w", err)
	}
	defer b.closeChannel(ch)
	var refused []refusal
	for _, d := range b.decls(serverMajor(conn.Properties)) {
		_, err := ch.QueueDeclare(d.name, true, false, false, false, d.args)
		if err == nil {
			continue
		}
		var ae *amqp.Error
		if !errors.As(err, &ae) || !inequivalent(ae) || d.kind == kindStream {
			return nil, fmt.Errorf("declare %s: %w", d.name, err)
		}
		refused = append(refused, refusal{decl: d, reason: ae.Reason})
		// The refusal closed the channel.
		if ch, err = conn.Channel(); err != nil {
			return nil, fmt.Errorf("declare %s: %w", d.name, err)
		}
	}
	return refused, nil
}

// inequivalent reports whether e is a declare refused because the queue
// exists with other arguments.
func inequivalent(e *amqp.Error) bool {
	return e.Code == amqp.PreconditionFailed && strings.Contains(e.Reason, "inequivalent arg")
}

// errInUse is a queue that would be migrated but has consumers: deleting
// it could lose what their processes publish meanwhile.
var errInUse = errors.New("in use")

// errLocked is another process holding the upgrade lock.
var errLocked = errors.New("another process has been upgrading the queues")

// lockWait bounds how long a connection waits for another process that is
// upgrading the same queues.
const lockWait = 10 * time.Second

// upgrade brings what earlier versions (or RabbitMQ before an upgrade of
// its own) left behind in line with this version: classic delay queues
// retire, a migration a process died in is finished, refused queues are
// migrated (see migrate) and old dead-letter queues move into their
// streams. What fails is logged, the queue used as it is, and tried again
// on the next connection.
//
// It works on a connection of its own: some refusals close the whole
// connection (a queue.delete with if-empty on a queue that turned out to be
// a quorum queue), which must not take the broker's down with it. And it
// holds an exclusive queue meanwhile, as a lock that dies with its
// connection: two processes starting together must not migrate the same
// queue, as one could delete it after the other declared it again and
// moved messages back into it.
//
// It fails only when queues were refused and it cannot see to them (no
// connection, another process holding the lock past lockWait): Run
// connects again later rather than go on with a queue another process is
// about to delete.
func (b *Broker) upgrade(ctx context.Context, major int, refused []refusal) error {
	conn, err := dial(ctx, b.opts.URL, "sluice-upgrade")
	if err != nil {
		if len(refused) > 0 {
			return fmt.Errorf("migrate %s: %w", refused[0].name, err)
		}
		b.logf("rabbitmq: upgrading old queues: %v", err)
		return nil
	}
	defer b.closeConn(conn, "upgrade")
	unlock, err := b.lock(ctx, conn)
	switch {
	case err != nil && len(refused) > 0:
		return fmt.Errorf("migrate %s: %w", refused[0].name, err)
	case errors.Is(err, errLocked), errors.Is(err, broker.ErrClosed):
		return nil // the process holding the lock sees to the rest
	case err != nil:
		b.logf("rabbitmq: upgrading old queues (tried again on the next connection): %v", err)
		return nil
	}
	defer unlock()
	b.retireLegacy(conn)
	byName := map[string]refusal{}
	for _, r := range refused {
		byName[r.name] = r
	}
	for _, d := range b.decls(major) {
		if d.kind != kindQueue {
			continue
		}
		// A process died migrating d: its messages go back first. If d
		// still has its old arguments, they move out again below.
		if err := b.finishMove(ctx, conn, d); err != nil {
			b.logf("rabbitmq: moving the messages of %s back into %s (tried again on the next connection): %v",
				migratingQueue(d.name), d.name, err)
			delete(byName, d.name) // moving more out would only mix them up
		}
	}
	for _, r := range refused {
		if _, ok := byName[r.name]; !ok {
			continue
		}
		// Another process may have migrated it while this one waited for
		// the lock.
		err := declareOn(conn, r.name, r.args)
		var ae *amqp.Error
		if err == nil || !errors.As(err, &ae) || !inequivalent(ae) {
			if err != nil {
				b.logf("rabbitmq: migrating %s (tried again on the next connection): %v", r.name, err)
			}
			continue
		}
		err = b.migrate(ctx, conn, major, r.decl)
		switch {
		case errors.Is(err, errInUse):
			b.warnOnce(r.name, "rabbitmq: queue %s exists with other arguments than sluice declares (%s), but "+
				"processes consume it (%v; an earlier version still running?): sluice uses it as it is and "+
				"migrates it when it starts while nobody consumes it", r.name, r.reason, err)
		case err != nil:
			b.logf("rabbitmq: migrating %s to today's arguments (%s): %v; sluice uses it as it is and tries "+
				"again on the next connection", r.name, r.reason, err)
		}
	}
	for _, be := range b.opts.Backends {
		if err := b.migrateDead(ctx, conn, be); err != nil {
			b.logf("rabbitmq: moving the dead letters of %s into %s (tried again on the next connection): %v",
				b.legacyDeadQueue(be), b.deadStream(be), err)
		}
	}
	return nil
}

// lock declares the lock queue, exclusive to conn, waiting up to lockWait
// while another connection holds it. unlock deletes it; so does the server
// when conn closes, however the process ends.
func (b *Broker) lock(ctx context.Context, conn *amqp.Connection) (unlock func(), err error) {
	name := b.lockQueue()
	lctx, cancel := context.WithTimeout(ctx, lockWait)
	defer cancel()
	unlock, err = retry.Value(lctx, retry.Backoff(100*time.Millisecond, 100*time.Millisecond), func() (func(), error) {
		ch, err := conn.Channel()
		if err != nil {
			return nil, retry.Permanent(err)
		}
		_, err = ch.QueueDeclare(name, false, true, true, false, amqp.Table{"x-queue-type": "classic"})
		if err == nil {
			return func() {
				if _, err := ch.QueueDelete(name, false, false, false); err != nil {
					// The server deletes it with the connection anyway.
					b.opts.Log.Debug().Err(err).Str("queue", name).Msg("rabbitmq: unlock")
				}
				b.closeChannel(ch)
			}, nil
		}
		var ae *amqp.Error
		if !errors.As(err, &ae) || ae.Code != amqp.ResourceLocked {
			return nil, retry.Permanent(fmt.Errorf("lock %s: %w", name, err))
		}
		return nil, errLocked // the refusal closed the channel
	})
	switch {
	case ctx.Err() != nil:
		return nil, broker.ErrClosed
	case errors.Is(err, errLocked) || errors.Is(err, context.DeadlineExceeded) && lctx.Err() != nil:
		return nil, fmt.Errorf("%w for %v", errLocked, lockWait)
	}
	return unlock, err
}

// migrate gives queue d today's arguments, which it cannot get in place:
// its messages move out, it is deleted and declared again, and for a
// request or the results queue they move back. Every message is moved at
// least once: a copy is confirmed before its original is acknowledged, and
// at every moment each message is in d or where it moves to, so a process
// that dies midway loses none (a temporary queue left behind is moved back
// on the next connection, see finishMove) and may duplicate a batch.
//
// It migrates only a queue nobody consumes (for a delay queue: whose target
// nobody consumes), checked again before the delete, as other consumers
// mean other processes, which may be publishing: what they publish to d
// between the last check that it is empty and its delete would be lost.
func (b *Broker) migrate(ctx context.Context, conn *amqp.Connection, major int, d decl) error {
	watched := d.name
	if d.kind == kindDelay {
		watched = d.target
	}
	idle := func() error { return b.idle(ctx, conn, watched) }
	if err := idle(); err != nil {
		return err
	}
	switch d.kind {
	case kindDelay:
		// Early in their target, the messages go back to a delay queue
		// when a consumer takes them (see consumer.route).
		n, err := b.moveOut(ctx, conn, d.name, d.target, idle)
		if err != nil {
			return fmt.Errorf("%d moved to %s, then: %w", n, d.target, err)
		}
		if err := declareOn(conn, d.name, d.args); err != nil {
			return err
		}
		b.infof("rabbitmq: declared %s again with today's arguments; its %d messages wait in %s until a consumer "+
			"sends them on", d.name, n, d.target)
		return nil
	case kindQueue:
		tmp := migratingQueue(d.name)
		if err := declareOn(conn, tmp, unlimited(major, amqp.Table{"x-queue-type": "quorum"})); err != nil {
			return err
		}
		n, err := b.moveOut(ctx, conn, d.name, tmp, idle)
		if errors.Is(err, errInUse) {
			// Consumers came: give them back what moved.
			if berr := b.finishMove(ctx, conn, d); berr != nil {
				return fmt.Errorf("%w; moving back: %v", err, berr)
			}
		}
		if err != nil {
			return fmt.Errorf("%d moved to %s, then: %w", n, tmp, err)
		}
		if err := declareOn(conn, d.name, d.args); err != nil {
			return fmt.Errorf("%d messages wait in %s: %w", n, tmp, err)
		}
		if _, err := b.moveOut(ctx, conn, tmp, d.name, nil); err != nil {
			return fmt.Errorf("moving %d messages back from %s: %w", n, tmp, err)
		}
		b.infof("rabbitmq: migrated %s to today's arguments, its %d messages moved out and back", d.name, n)
		return nil
	}
	return fmt.Errorf("%s cannot be migrated", d.name)
}

// idleWait bounds how long idle waits for a quorum queue to count no
// consumer.
const idleWait = 3 * time.Second

// idle reports errInUse while queue has consumers. A quorum queue counts
// each message taken with basic.get and not settled yet as a consumer, and
// applies the acknowledgements of a move a moment after they are sent, so
// idle waits a little for the count to fall to 0; a real consumer keeps it
// up.
func (b *Broker) idle(ctx context.Context, conn *amqp.Connection, queue string) error {
	deadline := time.Now().Add(idleWait)
	for {
		q, ok, err := inspect(conn, queue)
		if err != nil || !ok || q.Consumers == 0 {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %d consumers on %s", errInUse, q.Consumers, queue)
		}
		if !retry.Sleep(ctx, 20*time.Millisecond) {
			return broker.ErrClosed
		}
	}
}

// finishMove moves the messages of d's temporary queue, if there is one,
// back into d and deletes it: what is left when a process died migrating
// d.
func (b *Broker) finishMove(ctx context.Context, conn *amqp.Connection, d decl) error {
	tmp := migratingQueue(d.name)
	if _, ok, err := inspect(conn, tmp); err != nil || !ok {
		return err
	}
	n, err := b.moveOut(ctx, conn, tmp, d.name, nil)
	if err != nil {
		return fmt.Errorf("%d moved, then: %w", n, err)
	}
	b.infof("rabbitmq: moved %d messages of an unfinished migration from %s back into %s", n, tmp, d.name)
	return nil
}

// inspect reports queue's counts, and whether it exists.
func inspect(conn *amqp.Connection, queue string) (amqp.Queue, bool, error) {
	ch, err := conn.Channel()
	if err != nil {
		return amqp.Queue{}, false, err
	}
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.NotFound {
			return q, false, nil // the refusal closed the channel
		}
		return q, false, err
	}
	if err := ch.Close(); err != nil {
		return q, true, fmt.Errorf("close channel: %w", err)
	}
	return q, true, nil
}

// declareOn declares a durable queue on a channel of its own.
func declareOn(conn *amqp.Connection, queue string, args amqp.Table) (err error) {
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer func() {
		if cerr := ch.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close channel: %w", cerr)
		}
	}()
	if _, err := ch.QueueDeclare(queue, true, false, false, false, args); err != nil {
		return fmt.Errorf("declare %s: %w", queue, err)
	}
	return nil
}

// retireLegacy deletes the classic delay queues of earlier versions once
// empty (until then they keep forwarding their messages by TTL to the
// unchanged request and result queues, and count in Stats).
func (b *Broker) retireLegacy(conn *amqp.Connection) {
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
	b.closeChannel(ch)
	b.mu.Lock()
	b.legacyDelay = draining
	b.mu.Unlock()
}

// migrateBatch is how many messages move per round of confirms.
const migrateBatch = 256

// migrateDead moves the messages of backend's old dead-letter queue into its
// stream, then deletes the queue (see moveOut).
func (b *Broker) migrateDead(ctx context.Context, conn *amqp.Connection, backend string) error {
	old, stream := b.legacyDeadQueue(backend), b.deadStream(backend)
	if _, ok, err := inspect(conn, old); err != nil || !ok {
		return err
	}
	moved, err := b.moveOut(ctx, conn, old, stream, nil)
	if err != nil {
		return fmt.Errorf("%d moved, then: %w", moved, err)
	}
	b.infof("rabbitmq: moved %d dead letters from %s into %s and deleted the old queue", moved, old, stream)
	return nil
}

// moveOut moves every message of queue from into to, then deletes from
// once it is empty and idle (when given) has no objection. Each message is
// acknowledged only after to confirmed its copy, so a failure leaves it in
// from (to be moved again, never lost); a crash in between copies it
// twice.
//
// The delete cannot ask for an empty queue (quorum queues answer if-empty
// with NOT_IMPLEMENTED, which closes the connection), so it follows a check
// that the queue is empty. A message another process publishes to from in
// the moment between would be lost with the queue: upgrade by stopping the
// earlier version's processes first. The delete reports how many it
// deleted, so such a loss is at least logged.
func (b *Broker) moveOut(ctx context.Context, conn *amqp.Connection, from, to string, idle func() error) (int, error) {
	ch, err := conn.Channel()
	if err != nil {
		return 0, err
	}
	defer b.closeChannel(ch)
	if err := ch.Confirm(false); err != nil {
		return 0, err
	}
	// One batch at most is in flight, so the buffer never fills and never
	// holds up the connection's reader.
	returns := ch.NotifyReturn(make(chan amqp.Return, migrateBatch))
	moved := 0
	for {
		select {
		case <-ctx.Done():
			return moved, broker.ErrClosed
		default:
		}
		n, err := moveBatch(ch, from, to, returns)
		if err != nil {
			return moved, err
		}
		moved += n
		if n > 0 {
			continue
		}
		q, err := ch.QueueDeclarePassive(from, true, false, false, false, nil)
		if err != nil {
			return moved, err
		}
		if q.Messages > 0 {
			continue // one arrived meanwhile
		}
		if idle != nil {
			if err := idle(); err != nil {
				return moved, err
			}
		}
		lost, err := ch.QueueDelete(from, false, false, false)
		if err != nil {
			return moved, err
		}
		if lost > 0 {
			b.logf("rabbitmq: %d messages published to %s after it was found empty were deleted with it", lost, from)
		}
		return moved, nil
	}
}

// moveBatch copies up to migrateBatch messages of from into to and
// acknowledges them once to confirmed every copy. It returns how many it
// moved: 0 when from is empty.
func moveBatch(ch *amqp.Channel, from, to string, returns <-chan amqp.Return) (int, error) {
	var last uint64
	var confirms []*amqp.DeferredConfirmation
	for len(confirms) < migrateBatch {
		m, ok, err := ch.Get(from, false)
		if err != nil {
			return 0, err
		}
		if !ok {
			break
		}
		hdr := amqp.Table{}
		for k, v := range m.Headers {
			if k != "x-delivery-count" { // counted hand-backs (or listings) in from
				hdr[k] = v
			}
		}
		dc, err := ch.PublishWithDeferredConfirm("", to, true, false, amqp.Publishing{
			Headers: hdr, Body: m.Body, DeliveryMode: amqp.Persistent, MessageId: m.MessageId,
			ContentType: m.ContentType, ContentEncoding: m.ContentEncoding, CorrelationId: m.CorrelationId,
			ReplyTo: m.ReplyTo, Expiration: m.Expiration, Type: m.Type, AppId: m.AppId,
			Priority: m.Priority, Timestamp: m.Timestamp,
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
			return 0, fmt.Errorf("copy not confirmed by %s (%v)", to, err)
		}
	}
	select {
	case r := <-returns:
		return 0, fmt.Errorf("copy returned by %s: %d %s", to, r.ReplyCode, r.ReplyText)
	default:
	}
	if err := ch.Ack(last, true); err != nil {
		return 0, err
	}
	return len(confirms), nil
}
