package kafka

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/sluice-gw/sluice/broker"
)

// takenTopic records dead letters taken out for replay: Kafka cannot delete
// a record, so a taken one is remembered by its position, as the key
// "<topic>/<partition>/<offset>".
const takenTopic = "dlq-taken"

type record struct {
	partition int
	offset    int64
	at        time.Time
	msg       broker.Message
}

func (r record) pos(topic string) string {
	return topic + "/" + strconv.Itoa(r.partition) + "/" + strconv.FormatInt(r.offset, 10)
}

// readAll reads every record of topic up to its current end; without
// bodies, each value is dropped as soon as it is read.
func (b *Broker) readAll(ctx context.Context, topic string, bodies bool) ([]record, error) {
	name := b.name(topic)
	md, err := b.client.Metadata(ctx, &kafkago.MetadataRequest{Topics: []string{name}})
	if err != nil || len(md.Topics) == 0 {
		return nil, fmt.Errorf("read %s: %w: %v", topic, broker.ErrUnavailable, err)
	}
	var reqs []kafkago.OffsetRequest
	for _, p := range md.Topics[0].Partitions {
		reqs = append(reqs, kafkago.FirstOffsetOf(p.ID), kafkago.LastOffsetOf(p.ID))
	}
	lo, err := b.client.ListOffsets(ctx, &kafkago.ListOffsetsRequest{Topics: map[string][]kafkago.OffsetRequest{name: reqs}})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w: %v", topic, broker.ErrUnavailable, err)
	}
	var out []record
	for _, p := range lo.Topics[name] {
		for off := p.FirstOffset; off < p.LastOffset; {
			resp, err := b.client.Fetch(ctx, &kafkago.FetchRequest{Topic: name, Partition: p.Partition,
				Offset: off, MinBytes: 1, MaxBytes: int64(max(8<<20, b.fetchBytes())), MaxWait: 100 * time.Millisecond})
			if err != nil {
				return nil, fmt.Errorf("read %s: %w: %v", topic, broker.ErrUnavailable, err)
			}
			if resp.Error != nil {
				return nil, fmt.Errorf("read %s: %w: %v", topic, broker.ErrUnavailable, resp.Error)
			}
			next := off
			for {
				rec, err := resp.Records.ReadRecord()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					return nil, fmt.Errorf("read %s: %w", topic, err)
				}
				if rec.Offset >= off {
					msg, err := fromRecord(rec, bodies)
					if err != nil {
						return nil, fmt.Errorf("read %s: %w: %v", topic, broker.ErrUnavailable, err)
					}
					out = append(out, record{partition: p.Partition, offset: rec.Offset, at: rec.Time, msg: msg})
					next = rec.Offset + 1
				}
			}
			if next == off {
				break // nothing more readable now
			}
			off = next
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].at.Before(out[j].at) })
	return out, nil
}

// live returns topic's dead letters not taken yet, oldest first.
func (b *Broker) live(ctx context.Context, topic string) ([]record, error) {
	if !b.topics[topic] {
		return nil, fmt.Errorf("kafka: unknown topic %q", topic)
	}
	gone, err := b.taken(ctx)
	if err != nil {
		return nil, err
	}
	all, err := b.readAll(ctx, topic, false)
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, r := range all {
		if !gone[r.pos(topic)] {
			out = append(out, r)
		}
	}
	return out, nil
}

// fromRecord decodes a fetched record; without body its value is skipped.
func fromRecord(rec *kafkago.Record, body bool) (broker.Message, error) {
	m := kafkago.Message{Offset: rec.Offset, Time: rec.Time}
	var err error
	if rec.Key != nil {
		if m.Key, err = io.ReadAll(rec.Key); err != nil {
			return broker.Message{}, fmt.Errorf("record key: %w", err)
		}
	}
	if rec.Value != nil && body {
		if m.Value, err = io.ReadAll(rec.Value); err != nil {
			return broker.Message{}, fmt.Errorf("record value: %w", err)
		}
	}
	for _, h := range rec.Headers {
		m.Headers = append(m.Headers, kafkago.Header{Key: h.Key, Value: h.Value})
	}
	msg, _ := fromKafka(m) // the internal headers do not matter here
	return msg, nil
}

// taken returns the positions recorded as taken.
func (b *Broker) taken(ctx context.Context) (map[string]bool, error) {
	marks, err := b.readAll(ctx, takenTopic, false)
	if err != nil {
		return nil, err
	}
	gone := make(map[string]bool, len(marks))
	for _, t := range marks {
		gone[t.msg.Key] = true
	}
	return gone, nil
}

// ReadDead implements broker.DeadLetters: one fetch per position.
func (b *Broker) ReadDead(ctx context.Context, topic string, pos []string) ([]broker.DeadLetter, error) {
	if !b.topics[topic] {
		return nil, fmt.Errorf("kafka: unknown topic %q", topic)
	}
	gone, err := b.taken(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]broker.DeadLetter, 0, len(pos))
	for _, p := range pos {
		rest, ok := strings.CutPrefix(p, topic+"/")
		part, off, ok2 := strings.Cut(rest, "/")
		partition, err1 := strconv.Atoi(part)
		offset, err2 := strconv.ParseInt(off, 10, 64)
		if !ok || !ok2 || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("read %s: bad position %q", topic, p)
		}
		if gone[p] {
			continue
		}
		msg, found, err := b.readAt(ctx, topic, partition, offset)
		if err != nil {
			return nil, err
		}
		if found {
			out = append(out, broker.DeadLetter{Message: msg, Pos: p})
		}
	}
	return out, nil
}

// readAt reads the record of topic at partition and offset.
func (b *Broker) readAt(ctx context.Context, topic string, partition int, offset int64) (broker.Message, bool, error) {
	resp, err := b.client.Fetch(ctx, &kafkago.FetchRequest{Topic: b.name(topic), Partition: partition,
		Offset: offset, MinBytes: 1, MaxBytes: int64(max(8<<20, b.fetchBytes())), MaxWait: 100 * time.Millisecond})
	if err != nil {
		return broker.Message{}, false, fmt.Errorf("read %s: %w: %v", topic, broker.ErrUnavailable, err)
	}
	if resp.Error != nil {
		return broker.Message{}, false, fmt.Errorf("read %s: %w: %v", topic, broker.ErrUnavailable, resp.Error)
	}
	for {
		rec, err := resp.Records.ReadRecord()
		if errors.Is(err, io.EOF) {
			return broker.Message{}, false, nil
		}
		if err != nil {
			return broker.Message{}, false, fmt.Errorf("read %s: %w", topic, err)
		}
		if rec.Offset < offset {
			continue // the batch holding it starts earlier
		}
		if rec.Offset > offset {
			return broker.Message{}, false, nil
		}
		msg, err := fromRecord(rec, true)
		if err != nil {
			return broker.Message{}, false, fmt.Errorf("read %s: %w: %v", topic, broker.ErrUnavailable, err)
		}
		return msg, true, nil
	}
}

// ListDead implements broker.DeadLetters.
func (b *Broker) ListDead(ctx context.Context, topic string, limit int) ([]broker.DeadLetter, error) {
	recs, err := b.live(ctx, topic)
	if err != nil {
		return nil, err
	}
	var out []broker.DeadLetter
	for _, r := range recs {
		if limit > 0 && len(out) >= limit {
			break
		}
		out = append(out, broker.DeadLetter{Message: r.msg, Pos: r.pos(topic)})
	}
	return out, nil
}

// TakeDead implements broker.DeadLetters: it records the taken positions,
// so they are not listed again.
func (b *Broker) TakeDead(ctx context.Context, topic string, pos []string) error {
	if !b.topics[topic] {
		return fmt.Errorf("kafka: unknown topic %q", topic)
	}
	var marks []kafkago.Message
	for _, p := range pos {
		marks = append(marks, kafkago.Message{Topic: b.name(takenTopic), Key: []byte(p),
			Headers: []kafkago.Header{{Key: hdrKey, Value: []byte(p)}}})
	}
	if len(marks) > 0 {
		if err := b.w.WriteMessages(ctx, marks...); err != nil {
			return fmt.Errorf("take %s: %w: %v", topic, broker.ErrUnavailable, err)
		}
	}
	return nil
}
