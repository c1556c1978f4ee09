package rabbitmq

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sluice-gw/sluice/broker"
)

// A dead-letter topic is a stream: reading it is not a delivery, so
// listing it as often as a dashboard polls neither redelivers nor counts
// against a delivery limit (a quorum queue read with basic.get and requeue
// would drop every dead letter after its 20th listing on RabbitMQ 4.x). A
// stream keeps every message, so besides the dead letters it holds marks:
//
//   - taken marks, whose body lists the offsets TakeDead took; listings skip
//     those offsets;
//   - fences: a stream reports no message count, so each listing appends a
//     fence with an id of its own after it attached its reader, and reads
//     until it meets it; what was written before the listing began is
//     before the fence.
//
// Positions are stream offsets, so a copy with the same key that arrives
// after a listing has another position and stays when the listed ones are
// taken. Marks and fences are small but never go away, as nothing in a
// stream does: each listing reads every message since the stream began.
const (
	hdrMark  = "sluice-dlq-mark" // "taken" or "fence"
	hdrFence = "sluice-dlq-fence"

	markTaken = "taken"
	markFence = "fence"

	// readPrefetch is how many stream messages a listing takes at a time.
	readPrefetch = 512
	// takenPerMark bounds the offsets of one taken mark (about 10 bytes
	// each), far below any max_message_size.
	takenPerMark = 50000
)

// deadLetter is one live dead letter and its offset.
type deadLetter struct {
	off int64
	msg broker.Message
}

// readDead returns the dead letters of backend not taken yet, oldest
// first.
func (b *Broker) readDead(ctx context.Context, backend string) ([]deadLetter, error) {
	l := b.current()
	if l == nil {
		return nil, fmt.Errorf("%w: not connected", broker.ErrUnavailable)
	}
	stream := b.deadStream(backend)
	ch, err := l.sub.Channel()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", broker.ErrUnavailable, err)
	}
	defer func() { _ = ch.Close() }()
	// Acknowledgements on a stream only ask for more messages; a stream
	// consumer needs a prefetch.
	if err := ch.Qos(readPrefetch, 0, false); err != nil {
		return nil, fmt.Errorf("%w: %v", broker.ErrUnavailable, err)
	}
	msgs, err := ch.Consume(stream, "", false, false, false, false, amqp.Table{"x-stream-offset": "first"})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w: %v", stream, broker.ErrUnavailable, err)
	}
	fence, err := b.writeFence(ctx, stream)
	if err != nil {
		return nil, err
	}
	letters := map[int64]broker.Message{}
	taken := map[int64]bool{}
	unacked := 0
	for {
		var m amqp.Delivery
		var ok bool
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("read %s: %w: %v", stream, broker.ErrUnavailable, ctx.Err())
		case m, ok = <-msgs:
		}
		if !ok {
			return nil, fmt.Errorf("read %s: %w: channel closed", stream, broker.ErrUnavailable)
		}
		if unacked++; unacked >= readPrefetch/2 {
			if err := m.Ack(true); err != nil {
				return nil, fmt.Errorf("read %s: %w: %v", stream, broker.ErrUnavailable, err)
			}
			unacked = 0
		}
		off, ok := m.Headers["x-stream-offset"].(int64)
		if !ok {
			return nil, fmt.Errorf("read %s: message without x-stream-offset", stream)
		}
		mark, _ := m.Headers[hdrMark].(string)
		switch mark {
		case markFence:
			if id, _ := m.Headers[hdrFence].(string); id != fence {
				continue // another listing's
			}
			out := make([]deadLetter, 0, len(letters))
			for off, msg := range letters {
				out = append(out, deadLetter{off: off, msg: msg})
			}
			slices.SortFunc(out, func(a, b deadLetter) int { return cmp.Compare(a.off, b.off) })
			return out, nil
		case markTaken:
			for _, f := range strings.Split(string(m.Body), ",") {
				if o, err := strconv.ParseInt(f, 10, 64); err == nil {
					taken[o] = true
					delete(letters, o)
				}
			}
		default:
			if !taken[off] {
				letters[off] = toMessage(m.Headers, m.Body)
			}
		}
	}
}

// writeFence appends a fence with a fresh id to stream.
func (b *Broker) writeFence(ctx context.Context, stream string) (string, error) {
	var id [12]byte
	_, _ = rand.Read(id[:])
	fence := hex.EncodeToString(id[:])
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	err := b.publish(ctx, stream, amqp.Publishing{DeliveryMode: amqp.Persistent,
		Headers: amqp.Table{hdrMark: markFence, hdrFence: fence}})
	if err != nil {
		return "", fmt.Errorf("fence %s: %w", stream, err)
	}
	return fence, nil
}

// ListDead returns up to limit dead letters of topic that were not taken,
// oldest first. It reads the stream and leaves it as it was but for a
// fence.
func (b *Broker) ListDead(ctx context.Context, topic string, limit int) ([]broker.DeadLetter, error) {
	be, ok := b.dead[topic]
	if !ok {
		return nil, fmt.Errorf("rabbitmq: %q is not a dead-letter topic", topic)
	}
	live, err := b.readDead(ctx, be)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", topic, err)
	}
	if limit > 0 && len(live) > limit {
		live = live[:limit]
	}
	out := make([]broker.DeadLetter, len(live))
	for i, d := range live {
		out[i] = broker.DeadLetter{Message: d.msg, Pos: strconv.FormatInt(d.off, 10)}
	}
	return out, nil
}

// TakeDead records the positions as taken with a mark in the stream; the
// dead letters themselves stay there, unlisted.
func (b *Broker) TakeDead(ctx context.Context, topic string, pos []string) error {
	be, ok := b.dead[topic]
	if !ok {
		return fmt.Errorf("rabbitmq: %q is not a dead-letter topic", topic)
	}
	for _, p := range pos {
		if _, err := strconv.ParseInt(p, 10, 64); err != nil {
			return fmt.Errorf("take %s: position %q is not a stream offset", topic, p)
		}
	}
	stream := b.deadStream(be)
	for len(pos) > 0 {
		n := min(len(pos), takenPerMark)
		ctx, cancel := context.WithTimeout(ctx, b.timeout)
		err := b.publish(ctx, stream, amqp.Publishing{DeliveryMode: amqp.Persistent,
			Headers: amqp.Table{hdrMark: markTaken}, Body: []byte(strings.Join(pos[:n], ","))})
		cancel()
		if err != nil {
			return fmt.Errorf("take %s: %w", topic, err)
		}
		pos = pos[n:]
	}
	return nil
}
