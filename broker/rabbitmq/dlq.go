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
//   - taken marks, whose body lists the offsets TakeDead took; reads skip
//     those offsets (those before the mark: a mark takes what a listing
//     found earlier in the stream);
//   - fences: a stream reports no message count, so each read appends a
//     fence with an id of its own after it attached its reader, and reads
//     until it meets it; what was written before the read began is before
//     the fence.
//
// Positions are stream offsets, so a copy with the same key that arrives
// after a listing has another position and stays when the listed ones are
// taken. Listings hold metadata only: each body is dropped as soon as it is
// read. ReadDead reads from the smallest position it is asked for and keeps
// the bodies asked for only. Marks and fences are small but never go away,
// as nothing in a stream does: each listing reads every message since the
// stream began.
const (
	hdrMark  = "sluice-dlq-mark" // "taken" or "fence"
	hdrFence = "sluice-dlq-fence"

	markTaken = "taken"
	markFence = "fence"

	// readPrefetch is how many stream messages a read takes at a time.
	// Their bodies pass through the client however the read drops them, so
	// at most this many bodies are in memory in transit.
	readPrefetch = 512
	// takenPerMark bounds the offsets of one taken mark (about 10 bytes
	// each), far below any max_message_size.
	takenPerMark = 50000
)

// deadLetter is one live dead letter's metadata and its offset.
type deadLetter struct {
	off int64
	msg broker.Message // Body nil
}

// scanDead reads backend's stream from offset from (the first when from is
// negative) up to a fence it appends, and calls letter with every dead
// letter on the way and taken with every offset a taken mark lists. A mark
// takes only offsets before it (a listing found them, then TakeDead wrote
// the mark), so a read that starts at the smallest offset it wants meets
// every mark that concerns it, and listings and reads agree about a mark
// that names an offset not written yet.
//
// The delivery handed to letter is not kept: whatever letter does not copy
// out of it (a body it does not want) is garbage as soon as it returns.
func (b *Broker) scanDead(ctx context.Context, backend string, from int64,
	letter func(off int64, m *amqp.Delivery), taken func(off int64)) error {
	l := b.current()
	if l == nil {
		return fmt.Errorf("%w: not connected", broker.ErrUnavailable)
	}
	stream := b.deadStream(backend)
	ch, err := l.sub.Channel()
	if err != nil {
		return fmt.Errorf("%w: %v", broker.ErrUnavailable, err)
	}
	defer b.closeChannel(ch)
	// Acknowledgements on a stream only ask for more messages; a stream
	// consumer needs a prefetch.
	if err := ch.Qos(readPrefetch, 0, false); err != nil {
		return fmt.Errorf("%w: %v", broker.ErrUnavailable, err)
	}
	var start any = "first"
	if from >= 0 {
		start = from
	}
	msgs, err := ch.Consume(stream, "", false, false, false, false, amqp.Table{"x-stream-offset": start})
	if err != nil {
		return fmt.Errorf("read %s: %w: %v", stream, broker.ErrUnavailable, err)
	}
	fence, err := b.writeFence(ctx, stream)
	if err != nil {
		return err
	}
	unacked := 0
	for {
		var m amqp.Delivery
		var ok bool
		select {
		case <-ctx.Done():
			return fmt.Errorf("read %s: %w: %v", stream, broker.ErrUnavailable, ctx.Err())
		case m, ok = <-msgs:
		}
		if !ok {
			return fmt.Errorf("read %s: %w: channel closed", stream, broker.ErrUnavailable)
		}
		b.deadScanned.Add(1)
		if unacked++; unacked >= readPrefetch/2 {
			if err := m.Ack(true); err != nil {
				return fmt.Errorf("read %s: %w: %v", stream, broker.ErrUnavailable, err)
			}
			unacked = 0
		}
		off, ok := m.Headers["x-stream-offset"].(int64)
		if !ok {
			return fmt.Errorf("read %s: message without x-stream-offset", stream)
		}
		if off < from {
			continue // the stream starts a consumer at the chunk holding from
		}
		mark, _ := m.Headers[hdrMark].(string)
		switch mark {
		case markFence:
			if id, _ := m.Headers[hdrFence].(string); id == fence {
				return nil
			}
			// another reader's
		case markTaken:
			for _, f := range strings.Split(string(m.Body), ",") {
				if o, err := strconv.ParseInt(f, 10, 64); err == nil && o < off {
					taken(o)
				}
			}
		default:
			letter(off, &m)
		}
	}
}

// readDead returns the metadata of backend's dead letters not taken yet,
// oldest first. It holds no body: its memory grows with the number of dead
// letters, not with their size.
func (b *Broker) readDead(ctx context.Context, backend string) ([]deadLetter, error) {
	letters := map[int64]broker.Message{}
	err := b.scanDead(ctx, backend, -1,
		func(off int64, m *amqp.Delivery) { letters[off] = toMessage(m.Headers, nil) },
		func(off int64) { delete(letters, off) })
	if err != nil {
		return nil, err
	}
	out := make([]deadLetter, 0, len(letters))
	for off, msg := range letters {
		out = append(out, deadLetter{off: off, msg: msg})
	}
	slices.SortFunc(out, func(a, b deadLetter) int { return cmp.Compare(a.off, b.off) })
	return out, nil
}

// writeFence appends a fence with a fresh id to stream.
func (b *Broker) writeFence(ctx context.Context, stream string) (string, error) {
	var id [12]byte
	rand.Read(id[:]) // crypto/rand's Read never returns an error: it crashes instead
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
// oldest first, without their bodies. It reads the whole stream and leaves
// it as it was but for a fence.
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

// ReadDead returns the dead letters at positions pos with their bodies, in
// the order of pos, leaving out positions that were taken or hold no dead
// letter. It reads the stream from the smallest position asked for to a
// fence, keeping the bodies asked for only.
func (b *Broker) ReadDead(ctx context.Context, topic string, pos []string) ([]broker.DeadLetter, error) {
	be, ok := b.dead[topic]
	if !ok {
		return nil, fmt.Errorf("rabbitmq: %q is not a dead-letter topic", topic)
	}
	offs, err := offsets(topic, pos)
	if err != nil || len(offs) == 0 {
		return nil, err
	}
	want := make(map[int64]bool, len(offs))
	for _, o := range offs {
		want[o] = true
	}
	got := make(map[int64]broker.Message, len(offs))
	err = b.scanDead(ctx, be, slices.Min(offs),
		func(off int64, m *amqp.Delivery) {
			if want[off] {
				got[off] = toMessage(m.Headers, m.Body)
			}
		},
		func(off int64) { delete(got, off) })
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", topic, err)
	}
	out := make([]broker.DeadLetter, 0, len(offs))
	for i, o := range offs {
		if msg, ok := got[o]; ok {
			out = append(out, broker.DeadLetter{Message: msg, Pos: pos[i]})
		}
	}
	return out, nil
}

// offsets parses dead-letter positions, which are stream offsets.
func offsets(topic string, pos []string) ([]int64, error) {
	out := make([]int64, len(pos))
	for i, p := range pos {
		o, err := strconv.ParseInt(p, 10, 64)
		if err != nil || o < 0 {
			return nil, fmt.Errorf("%s: position %q is not a stream offset", topic, p)
		}
		out[i] = o
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
	if _, err := offsets(topic, pos); err != nil {
		return fmt.Errorf("take %w", err)
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
