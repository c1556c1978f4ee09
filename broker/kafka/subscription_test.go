package kafka

import (
	"errors"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/broker/brokertest"
	"github.com/sluice-gw/sluice/internal/wait"
)

// refuseProduce makes Kafka refuse every write to Kafka topic name (""
// for all) with a transient error until the returned function is called;
// hits counts the refused produce requests.
func refuseProduce(c *kfake.Cluster, name string) (lift func(), hits func() int) {
	h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: name, Err: kerr.NotEnoughReplicas, Count: -1})
	return h.Remove, h.Hits
}

// TestNackCopyLandsLater: Kafka cannot take a Nack's copy at first; the
// subscription keeps trying, and once the copy landed the original is
// committed: once the copy is acknowledged, nothing comes again.
func TestNackCopyLandsLater(t *testing.T) {
	t.Parallel() // each test runs its own kfake cluster
	c, addrs := fakeCluster(t, 1)
	b := openT(t, Options{Brokers: addrs, Backends: []string{"a"}})
	ctx := ctxT(t, 60*time.Second)
	topic := broker.RequestTopic("a")
	if err := b.Publish(ctx, topic, broker.Message{Key: "k", Body: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	sub := subscribe(t, b, topic)
	d := brokertest.FetchOne(t, sub, 10*time.Second)
	lift, _ := refuseProduce(c, b.name(tierTopic(100*time.Millisecond)))
	if err := d.Nack(ctx, 300*time.Millisecond); !errors.Is(err, broker.ErrUnavailable) {
		lift()
		t.Fatalf("nack while Kafka refuses the copy: %v, want ErrUnavailable", err)
	}
	lift()
	again := brokertest.FetchOne(t, sub, 20*time.Second)
	if again.Message().Key != "k" {
		t.Fatalf("got %q, want the copy of k", again.Message().Key)
	}
	_ = again.Ack(ctx)
	_ = sub.Close()

	sub2 := subscribe(t, b, topic)
	brokertest.ExpectNothing(t, sub2, 2*time.Second)
}

// TestCloseStopsRepublisher: Close stops and waits for a Nack's background
// republisher; the original, whose copy never landed, stays uncommitted
// and comes again, and no copy turns up after Close.
func TestCloseStopsRepublisher(t *testing.T) {
	// Not parallel: it counts every goroutine of the package (parallel
	// tests start once the sequential ones are done).
	c, addrs := fakeCluster(t, 1)
	b, stop := openStop(t, Options{Brokers: addrs, Backends: []string{"a"}})
	ctx := ctxT(t, 60*time.Second)
	topic := broker.RequestTopic("a")
	if err := b.Publish(ctx, topic, broker.Message{Key: "k", Body: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	sub, err := b.Subscribe(ctx, topic, broker.SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d := brokertest.FetchOne(t, sub, 10*time.Second)
	// Every topic: the copy goes straight to its own topic once its delay
	// has passed.
	lift, hits := refuseProduce(c, "")
	if err := d.Nack(ctx, 300*time.Millisecond); !errors.Is(err, broker.ErrUnavailable) {
		lift()
		t.Fatalf("nack while Kafka refuses the copy: %v, want ErrUnavailable", err)
	}
	// Close while the republisher is in the middle of an attempt: kafka-go
	// makes three produce requests per write, the Nack's own are over.
	refused := hits()
	defer lift() // also when wait.For fails the test; lifted again below
	wait.For(t, 10*time.Second, "a republish attempt after a Nack Kafka refused", func() bool { return hits() != refused })
	start := time.Now()
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("Close took %v with a republisher running", el)
	}
	noneOf(t, "(*subscription)")
	noneOf(t, "(*Broker).Subscribe")
	lift()

	sub2 := subscribe(t, b, topic)
	if d := brokertest.FetchOne(t, sub2, 20*time.Second); d.Message().Key != "k" {
		t.Fatalf("got %q, want the original k again", d.Message().Key)
	} else {
		_ = d.Ack(ctx)
	}
	brokertest.ExpectNothing(t, sub2, 1500*time.Millisecond)

	if err := sub2.Close(); err != nil {
		t.Fatal(err)
	}
	stop() // Run returns, then Close; either's error fails t
	if t.Failed() {
		t.FailNow()
	}
	if left := ours(); len(left) > 0 {
		t.Fatalf("%d goroutines left after Close, first:\n%s", len(left), left[0])
	}
}

// TestNackTooLarge: a copy refused for size is not retried (it never will
// fit) and the original is not settled (that would lose it): the caller
// gets ErrTooLarge and can still Ack it.
func TestNackTooLarge(t *testing.T) {
	t.Parallel() // each test runs its own kfake cluster
	addrs := brokers(t)
	b := openT(t, Options{Brokers: addrs, Backends: []string{"a"}})
	ctx := ctxT(t, 60*time.Second)
	topic := broker.RequestTopic("a")
	if err := b.Publish(ctx, topic, broker.Message{Key: "k", Body: make([]byte, 16<<10)}); err != nil {
		t.Fatal(err)
	}
	setTopicConfig(t, addrs, b.name(tierTopic(100*time.Millisecond)), "max.message.bytes", "4096")
	sub := subscribe(t, b, topic)
	d := brokertest.FetchOne(t, sub, 10*time.Second)
	err := d.Nack(ctx, 300*time.Millisecond)
	if !errors.Is(err, broker.ErrTooLarge) || errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("nack with a copy too large for its tier: %v, want only ErrTooLarge", err)
	}
	noneOf(t, "republish")
	brokertest.ExpectNothing(t, sub, time.Second)
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	_ = sub.Close()
	sub2 := subscribe(t, b, topic)
	brokertest.ExpectNothing(t, sub2, 2*time.Second)
}
