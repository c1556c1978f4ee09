package kafka

import (
	"bytes"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/broker/brokertest"
)

// TestLargeMessages sends a 3 MiB message through every path a message
// takes: publish and consume, a delay tier and its forwarder, and the
// dead-letter listing. kafka-go's defaults (1 MiB batches and fetches) and
// Kafka's (1 MiB max.message.bytes) each refuse it.
func TestLargeMessages(t *testing.T) {
	t.Parallel() // each test runs its own kfake cluster
	addrs := brokers(t)
	b := openT(t, Options{Brokers: addrs, Backends: []string{"a"}})
	if got := b.MaxMessageBytes(); got != 4<<20 {
		t.Fatalf("MaxMessageBytes() = %d, want the 4 MiB default", got)
	}
	body := bytes.Repeat([]byte("0123456789abcdef"), 3<<20/16)
	big := func(key string) broker.Message {
		return broker.Message{Key: key, Headers: map[string]string{"h": "v"}, Body: body}
	}
	ctx := ctxT(t, 60*time.Second)
	topic := broker.RequestTopic("a")
	if err := b.Publish(ctx, topic, big("now")); err != nil {
		t.Fatalf("publish 3 MiB: %v", err)
	}
	held := big("held")
	held.NotBefore = time.Now().Add(300 * time.Millisecond)
	if err := b.Publish(ctx, topic, held); err != nil {
		t.Fatalf("publish 3 MiB held back: %v", err)
	}
	sub := subscribe(t, b, topic)
	got := map[string]bool{}
	for len(got) < 2 {
		d := brokertest.FetchOne(t, sub, 30*time.Second)
		m := d.Message()
		if !bytes.Equal(m.Body, body) || m.Headers["h"] != "v" {
			t.Fatalf("%s came back changed: %d bytes, headers %v", m.Key, len(m.Body), m.Headers)
		}
		got[m.Key] = true
		_ = d.Ack(ctx)
	}
	if !got["now"] || !got["held"] {
		t.Fatalf("got %v, want now and held", got)
	}

	dlq := broker.DeadLetterTopic("a")
	if err := b.Publish(ctx, dlq, big("dead")); err != nil {
		t.Fatalf("dead-letter 3 MiB: %v", err)
	}
	list, err := b.ListDead(ctx, dlq, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Key != "dead" {
		t.Fatalf("listed %d dead letters, want the 3 MiB one", len(list))
	}
	read, err := b.ReadDead(ctx, dlq, []string{list[0].Pos})
	if err != nil || len(read) != 1 || !bytes.Equal(read[0].Body, body) {
		t.Fatalf("read the 3 MiB dead letter: %d, %v", len(read), err)
	}
}

// TestTooLarge checks both ways a message is refused for its size —
// counted by sluice before writing, and answered by Kafka for a topic that
// takes less — and that the writer goes on afterwards.
func TestTooLarge(t *testing.T) {
	t.Parallel() // each test runs its own kfake cluster
	addrs := brokers(t)
	const limit = 64 << 10
	b := openT(t, Options{Brokers: addrs, Backends: []string{"a"}, MaxMessageBytes: limit})
	ctx := ctxT(t, 60*time.Second)
	topic := broker.RequestTopic("a")
	small := broker.Message{Key: "small", Body: []byte("{}")}

	// Exactly at the limit as sluice counts it: kafka-go and Kafka take
	// it, and so does a delay tier when it is nacked.
	at := broker.Message{Key: "at", Headers: map[string]string{"h": "v"}}
	at.Body = make([]byte, limit-size(toKafka(b.name(topic), at))-delayRoom(topic))
	if err := b.Publish(ctx, topic, at); err != nil {
		t.Fatalf("publish at the limit: %v", err)
	}
	over := at
	over.Body = append(append([]byte(nil), at.Body...), 0)
	if err := b.Publish(ctx, topic, over); !errors.Is(err, broker.ErrTooLarge) {
		t.Fatalf("one byte over the limit: %v, want ErrTooLarge", err)
	}
	sub := subscribe(t, b, topic)
	d := brokertest.FetchOne(t, sub, 10*time.Second)
	if err := d.Nack(ctx, 200*time.Millisecond); err != nil {
		t.Fatalf("nack at the limit: %v", err)
	}
	if d := brokertest.FetchOne(t, sub, 10*time.Second); d.Message().Key != "at" || len(d.Message().Body) != len(at.Body) {
		t.Fatalf("got %q (%d bytes) back, want the nacked one", d.Message().Key, len(d.Message().Body))
	} else {
		_ = d.Ack(ctx)
	}

	// Kafka's own refusal: the operator lowered the topic's limit.
	setTopicConfig(t, addrs, b.name(topic), "max.message.bytes", "4096")
	mid := broker.Message{Key: "mid", Body: make([]byte, 16<<10)}
	for i := range 3 {
		err := b.Publish(ctx, topic, mid)
		if !errors.Is(err, broker.ErrTooLarge) || errors.Is(err, broker.ErrUnavailable) {
			t.Fatalf("publish %d over the topic's limit: %v, want only ErrTooLarge", i+1, err)
		}
	}
	if err := b.Publish(ctx, topic, small); err != nil {
		t.Fatalf("publish after refusals: %v", err)
	}
	if err := b.Publish(ctx, broker.ResultTopic, mid); err != nil {
		t.Fatalf("publish to a topic that takes it: %v", err)
	}
	if d := brokertest.FetchOne(t, sub, 10*time.Second); d.Message().Key != "small" {
		t.Fatalf("got %q, want small", d.Message().Key)
	}
}

// TestForwarderPassesOverOversized: a held-back message a smaller tier or
// its topic refuses for size must not hold up the tier behind it.
func TestForwarderPassesOverOversized(t *testing.T) {
	t.Parallel() // each test runs its own kfake cluster
	addrs := brokers(t)
	b := openT(t, Options{Brokers: addrs, Backends: []string{"a"}, MaxMessageBytes: 1 << 20})
	ctx := ctxT(t, 60*time.Second)
	topic := broker.RequestTopic("a")
	sub := subscribe(t, b, topic)

	// The 100ms tier takes less than the 1s tier: a message that waited
	// 1s and has 200ms left goes straight to its topic, a little early.
	setTopicConfig(t, addrs, b.name(tierTopic(100*time.Millisecond)), "max.message.bytes", "4096")
	early := broker.Message{Key: "k", Headers: map[string]string{"n": "early"}, Body: make([]byte, 16<<10),
		NotBefore: time.Now().Add(1200 * time.Millisecond)}
	if err := b.Publish(ctx, topic, early); err != nil {
		t.Fatal(err)
	}
	d := brokertest.FetchOne(t, sub, 15*time.Second)
	if d.Message().Headers["n"] != "early" {
		t.Fatalf("got %v, want the one that could not wait in the smaller tier", d.Message().Headers)
	}
	_ = d.Ack(ctx)

	// The topic itself refuses it: it is passed over, and the message
	// behind it in the 500ms tier (same key, same partition) still comes.
	setTopicConfig(t, addrs, b.name(topic), "max.message.bytes", "4096")
	for i, body := range [][]byte{make([]byte, 16<<10), []byte("{}")} {
		m := broker.Message{Key: "k", Headers: map[string]string{"n": strconv.Itoa(i)}, Body: body,
			NotBefore: time.Now().Add(550 * time.Millisecond)}
		if err := b.Publish(ctx, topic, m); err != nil {
			t.Fatal(err)
		}
	}
	d = brokertest.FetchOne(t, sub, 15*time.Second)
	if d.Message().Headers["n"] != "1" {
		t.Fatalf("got %v, want the small one behind the refused one", d.Message().Headers)
	}
	_ = d.Ack(ctx)
	brokertest.ExpectNothing(t, sub, 500*time.Millisecond)
}
