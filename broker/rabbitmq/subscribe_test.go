package rabbitmq

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/broker/brokertest"
	"github.com/sluice-gw/sluice/internal/stacks"
	"github.com/sluice-gw/sluice/internal/wait"
)

// blockPublishing takes every channel out of b's publish pool, as a
// blocked or stalled publishing connection would hold them, until the
// returned func puts them back.
func blockPublishing(t *testing.T, b *Broker) (unblock func()) {
	t.Helper()
	l := b.current()
	var taken []*pubChan
	for range b.opts.PublishChannels {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		pc, err := b.take(ctx, l)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		taken = append(taken, pc)
	}
	return func() {
		for _, pc := range taken {
			b.give(l, pc)
		}
		taken = nil
	}
}

// TestNackWithDelayIsBounded nacks with a delay while no publish can go
// through, with a context that never ends (as the consume path and
// shutdown hand-backs do): Nack returns within the broker's own bound and
// the message comes again.
func TestNackWithDelayIsBounded(t *testing.T) {
	b := openTest(t, Options{})
	b.timeout = 300 * time.Millisecond
	topic := broker.RequestTopic("a")
	publishSoon(t, b, topic, deadMsg(1))
	sub, err := b.Subscribe(context.Background(), topic, broker.SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	d := brokertest.FetchOne(t, sub, 10*time.Second)
	unblock := blockPublishing(t, b)
	defer unblock()
	done := make(chan error, 1)
	go func() { done <- d.Nack(context.Background(), time.Minute) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Nack with a delay blocked on a publish that cannot go through")
	}
	unblock()
	if k := brokertest.FetchOne(t, sub, 10*time.Second).Message().Key; k != deadMsg(1).Key {
		t.Fatalf("got %q back", k)
	}
}

// injectEarly puts a message straight into topic's queue as if it came
// back from a delay tier an hour too early: the consumer moves it on to a
// smaller tier.
func injectEarly(t *testing.T, b *Broker, topic, key string) {
	t.Helper()
	ch := rawChannel(t)
	nb := strconv.FormatInt(time.Now().Add(time.Hour).UnixNano(), 10)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	dc, err := ch.PublishWithDeferredConfirm("", b.name(topic), true, false, amqp.Publishing{DeliveryMode: amqp.Persistent,
		Headers: amqp.Table{hdrKey: key, hdrNotBefore: nb}, Body: []byte(key)})
	if err != nil || !dc.Wait() {
		t.Fatalf("inject: %v", err)
	}
}

// TestCloseWhileMovingOn closes a subscription whose consumer is moving a
// message on to a smaller delay tier while publishing is blocked: Close
// returns at once instead of waiting on the publish forever, and the
// message stays in the topic.
func TestCloseWhileMovingOn(t *testing.T) {
	b := openTest(t, Options{})
	topic := broker.RequestTopic("a")
	injectEarly(t, b, topic, "early")
	unblock := blockPublishing(t, b)
	defer unblock()
	sub, err := b.Subscribe(context.Background(), topic, broker.SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wait.For(t, 10*time.Second, "consumer took the message", func() bool { return b.held(topic).Load() == 1 })
	closed := make(chan error, 1)
	go func() { closed <- sub.Close() }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close blocked on the consumer's publish")
	}
	unblock()
	wait.For(t, 10*time.Second, "message back in its queue", func() bool {
		st, err := b.Stats(context.Background(), topic)
		return err == nil && st.Depth == 1
	})
}

// TestMoveRetriedNotRequeued has a consumer fail to move a message on to a
// smaller tier (publishing blocked) again and again: it keeps the message
// and tries again, rather than hand it back to the queue, which would count
// against the message's delivery limit (1 here: two hand-backs would
// dead-letter it). Once publishing works, it moves.
func TestMoveRetriedNotRequeued(t *testing.T) {
	b := openTest(t, Options{DeliveryLimit: 1})
	b.timeout = 200 * time.Millisecond
	topic := broker.RequestTopic("a")
	injectEarly(t, b, topic, "early")
	unblock := blockPublishing(t, b)
	defer unblock()
	sub, err := b.Subscribe(context.Background(), topic, broker.SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	wait.For(t, 10*time.Second, "consumer took the message", func() bool { return b.held(topic).Load() == 1 })
	wait.For(t, 20*time.Second, "several failed moves", func() bool { return b.movesFailed.Load() >= 3 })
	unblock()
	wait.For(t, 10*time.Second, "message moved to a delay tier", func() bool {
		q, err := rawChannel(t).QueueDeclarePassive(b.delayQueue(10*time.Minute, topic), true, false, false, false, nil)
		return err == nil && q.Messages == 1 && b.held(topic).Load() == 0
	})
	// It left its queue once, acknowledged: never handed back.
	_ = sub.Close()
	q, err := rawChannel(t).QueueDeclarePassive(b.name(topic), true, false, false, false, nil)
	if err != nil || q.Messages != 0 {
		t.Fatalf("request queue: %+v, %v; want empty", q, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if dead, err := b.ListDead(ctx, broker.DeadLetterTopic("a"), 0); err != nil || len(dead) != 0 {
		t.Fatalf("dead letters %v, %v: the message was handed back until dead-lettered", dead, err)
	}
}

// ownGoroutines lists the goroutines running code of this package, but
// for the test's own.
func ownGoroutines() []string { return stacks.Running("sluice/broker/rabbitmq") }

// TestCloseStopsEveryGoroutine closes the broker under a subscription that
// was never closed and holds messages back for a few milliseconds: Close
// waits for every goroutine of the broker, the subscription's included,
// and closing the subscription after it is harmless.
func TestCloseStopsEveryGoroutine(t *testing.T) {
	b := openTest(t, Options{})
	topic := broker.RequestTopic("a")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 3 {
		m := deadMsg(i)
		m.NotBefore = time.Now().Add(80 * time.Millisecond) // below the smallest tier: held in the consumer
		if err := b.Publish(ctx, topic, m); err != nil {
			t.Fatal(err)
		}
	}
	sub, err := b.Subscribe(ctx, topic, broker.SubscribeOptions{Prefetch: 8})
	if err != nil {
		t.Fatal(err)
	}
	wait.For(t, 10*time.Second, "consumer took the messages", func() bool { return b.held(topic).Load() == 3 })
	closed := make(chan struct{})
	go func() { _ = b.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(15 * time.Second):
		t.Fatal("broker Close did not return")
	}
	// A goroutine that just signalled it is done may still be on its way
	// out; one that is blocked stays.
	if gs := stacks.Left(2*time.Second, ownGoroutines); len(gs) > 0 {
		t.Fatalf("%d goroutines outlived Close:\n%s", len(gs), strings.Join(gs, "\n\n"))
	}
	_ = sub.Close()
	if _, err := sub.Fetch(ctx, 1); err == nil {
		t.Fatal("fetch after close")
	}
}

// TestResultsKeepEveryEvent hands status events back to the results queue
// more often than the request queues' delivery limit (2 here), as a
// collector that stops or reconnects holding them does: none is dropped,
// since a dropped event leaves its request's poll pending forever. With the
// limit on the results queue too, the queue was empty after three rounds.
func TestResultsKeepEveryEvent(t *testing.T) {
	b := openTest(t, Options{DeliveryLimit: 2})
	topic := broker.ResultTopic
	want := []string{"e0", "e1", "e2"}
	for _, k := range want {
		publishSoon(t, b, topic, broker.Message{Key: k, Body: []byte(k)})
	}
	for round := range 4 {
		sub, err := b.Subscribe(context.Background(), topic, broker.SubscribeOptions{Prefetch: 8})
		if err != nil {
			t.Fatal(err)
		}
		wait.For(t, 10*time.Second, fmt.Sprintf("round %d: the consumer holds all %d events (one was dropped?)", round+1, len(want)),
			func() bool { return b.held(topic).Load() == int64(len(want)) })
		_ = sub.Close() // hands them back
	}
	consumeAll(t, b, topic, want)
}

// TestPauseHandsBack: a paused subscription holds nothing at the broker —
// no consumer, every buffered message back in the queue — until Resume, so
// a long pause cannot wear down the delivery limit at each consumer
// timeout; the message fetched before the pause stays valid.
func TestPauseHandsBack(t *testing.T) {
	b := openTest(t, Options{})
	topic := broker.RequestTopic("a")
	for i := range 5 {
		publishSoon(t, b, topic, deadMsg(i))
	}
	sub, err := b.Subscribe(context.Background(), topic, broker.SubscribeOptions{Prefetch: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	wait.For(t, 10*time.Second, "the consumer holds all five", func() bool { return b.held(topic).Load() == 5 })
	first := brokertest.FetchOne(t, sub, 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := first.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	pauser := sub.(broker.Pauser)
	if err := pauser.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 10*time.Second, "paused: nothing held, no consumer, four ready", func() bool {
		q, err := rawChannel(t).QueueDeclarePassive(b.name(topic), true, false, false, false, nil)
		return err == nil && b.held(topic).Load() == 0 && q.Consumers == 0 && q.Messages == 4
	})
	// Nothing comes back while paused: watched for a window.
	wait.Never(t, 300*time.Millisecond, "the paused subscription took messages", func() bool { return b.held(topic).Load() != 0 })
	if err := pauser.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{first.Message().Key: true}
	for len(got) < 5 {
		d := brokertest.FetchOne(t, sub, 10*time.Second)
		got[d.Message().Key] = true
		_ = d.Ack(ctx)
	}
}
