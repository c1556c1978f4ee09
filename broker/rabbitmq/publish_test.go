package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/internal/wait"
)

// publishSoon publishes msg, retrying briefly: the pool may still be
// refilling after a channel died.
func publishSoon(t *testing.T, b *Broker, topic string, msg broker.Message) {
	t.Helper()
	wait.For(t, 10*time.Second, "publishing to work again", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return b.Publish(ctx, topic, msg) == nil
	})
}

// TestServerRefusesSize publishes messages over the server's
// max_message_size (lowered for the test's channels only: a channel reads
// it when it opens) though under MaxMessageBytes: each fails with
// ErrTooLarge, not ErrUnavailable, and the one publish channel the server
// closed for it is replaced, so publishing goes on.
func TestServerRefusesSize(t *testing.T) {
	needCtl(t)
	out := ctlOutput(t, "eval", "application:get_env(rabbit, max_message_size).")
	m := regexp.MustCompile(`\{ok,(\d+)\}`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("max_message_size: %s", out)
	}
	restore := func() { ctlOutput(t, "eval", fmt.Sprintf("application:set_env(rabbit, max_message_size, %s).", m[1])) }
	t.Cleanup(restore)
	ctlOutput(t, "eval", "application:set_env(rabbit, max_message_size, 8388608).")
	b := openTest(t, Options{PublishChannels: 1})
	restore() // the broker's channels keep 8 MiB; nobody else's is affected from now on
	topic := broker.RequestTopic("a")
	big := deadMsg(0)
	big.Body = make([]byte, 9<<20)
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := b.Publish(ctx, topic, big)
		cancel()
		if !errors.Is(err, broker.ErrTooLarge) || errors.Is(err, broker.ErrUnavailable) {
			t.Fatalf("publish %d over the server's limit: %v, want ErrTooLarge", i+1, err)
		}
		publishSoon(t, b, topic, deadMsg(i+1))
	}
	sub, err := b.Subscribe(context.Background(), topic, broker.SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 3 {
		ds, err := sub.Fetch(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		if k := ds[0].Message().Key; k != deadMsg(i+1).Key {
			t.Fatalf("got %q, want %q", k, deadMsg(i+1).Key)
		}
		_ = ds[0].Ack(ctx)
	}
}

// TestDeadChannelsAreReplaced has the server close publish channels (a
// publish to an exchange that does not exist) many more times than the
// pool has channels: publishing keeps working on the live connection.
func TestDeadChannelsAreReplaced(t *testing.T) {
	b := openTest(t, Options{PublishChannels: 2})
	for i := range 8 {
		l := b.current()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		pc, err := b.take(ctx, l)
		cancel()
		if err != nil {
			t.Fatalf("round %d: no publish channel: %v", i, err)
		}
		_ = pc.ch.Publish("sluice-no-such-exchange", "x", false, false, amqp.Publishing{})
		select {
		case <-pc.dead:
		case <-time.After(10 * time.Second):
			t.Fatal("the server did not close the channel")
		}
		b.give(l, pc)
		publishSoon(t, b, broker.RequestTopic("a"), deadMsg(i))
	}
	if l := b.current(); l == nil || l.pub.IsClosed() {
		t.Fatal("the connection broke: the test wanted channels closed on a live connection")
	}
}

// TestUnroutableIsNotConfirmed deletes a queue out from under the broker:
// a publish to it fails instead of being confirmed into nothing, and the
// broker declares the queue again so that publishing resumes.
func TestUnroutableIsNotConfirmed(t *testing.T) {
	b := openTest(t, Options{})
	if _, err := rawChannel(t).QueueDelete(b.name(broker.RequestTopic("a")), false, false, false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := b.Publish(ctx, broker.RequestTopic("a"), deadMsg(1))
	if err == nil {
		t.Fatal("publish to a deleted queue confirmed")
	}
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("publish to a deleted queue: %v, want ErrUnavailable", err)
	}
	publishSoon(t, b, broker.RequestTopic("a"), deadMsg(2))
}

// TestReturnsFindTheirPublish pipelines publishes to a deleted queue and
// to a live one on one channel: the returns fail exactly the publishes
// they belong to. No publish to the live queue fails, and every publish to
// the other that succeeded (once the broker declared it again) is there.
func TestReturnsFindTheirPublish(t *testing.T) {
	b := openTest(t, Options{PublishChannels: 1, Backends: []string{"a", "b"}})
	if _, err := rawChannel(t).QueueDelete(b.name(broker.RequestTopic("a")), false, false, false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var mu sync.Mutex
	landed := map[string]bool{}
	failedA := 0
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			be := []string{"a", "b"}[i%2]
			msg := deadMsg(i)
			msg.Key = be + msg.Key
			err := b.Publish(ctx, broker.RequestTopic(be), msg)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil && be == "a":
				landed[msg.Key] = true
			case err != nil && be == "b":
				t.Errorf("publish to the live queue failed: %v", err)
			case err != nil:
				failedA++
			}
		}()
	}
	wg.Wait()
	if failedA == 0 {
		t.Fatal("no publish to the deleted queue failed")
	}
	sub, err := b.Subscribe(ctx, broker.RequestTopic("a"), broker.SubscribeOptions{Prefetch: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for len(landed) > 0 {
		ds, err := sub.Fetch(ctx, 64)
		if err != nil {
			t.Fatalf("%d confirmed publishes are not in the queue (%d failed): %v", len(landed), failedA, err)
		}
		for _, d := range ds {
			delete(landed, d.Message().Key)
			_ = d.Ack(ctx)
		}
	}
}
