package rabbitmq

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sluice-gw/sluice/broker"
)

// TestTopology checks what Open declares: quorum queues with an explicit
// delivery limit, request queues dead-lettering at least once into their
// backend's stream, and delay tiers that are quorum queues (they survive a
// node loss) dead-lettering at least once to their target. DeleteQueues
// removes all of it.
func TestTopology(t *testing.T) {
	needCtl(t)
	prefix := testPrefix("topology")
	b := openTest(t, Options{QueuePrefix: prefix, DeliveryLimit: 7})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := b.ListDead(ctx, broker.DeadLetterTopic("a"), 0); err != nil {
		t.Fatal(err)
	}
	got := queuesWith(t, prefix)
	want := map[string]map[string]any{
		prefix + "dlq-stream.a": {"x-queue-type": "stream"},
		prefix + "requests.a": {"x-queue-type": "quorum", "x-delivery-limit": 7.0, "x-dead-letter-exchange": "",
			"x-dead-letter-routing-key": prefix + "dlq-stream.a", "x-dead-letter-strategy": "at-least-once",
			"x-overflow": "reject-publish"},
		prefix + "results": {"x-queue-type": "quorum", "x-delivery-limit": 7.0},
	}
	for _, target := range []string{"requests.a", "results"} {
		for _, d := range broker.DelayTiers {
			want[prefix+"delay-quorum."+d.String()+"."+target] = map[string]any{"x-queue-type": "quorum",
				"x-delivery-limit": 7.0, "x-message-ttl": float64(d.Milliseconds()), "x-dead-letter-exchange": "",
				"x-dead-letter-routing-key": prefix + target, "x-dead-letter-strategy": "at-least-once",
				"x-overflow": "reject-publish"}
		}
	}
	for name, args := range want {
		q, ok := got[name]
		if !ok {
			t.Errorf("%s not declared", name)
			continue
		}
		if q.Type != args["x-queue-type"] {
			t.Errorf("%s is a %s queue, want %s", name, q.Type, args["x-queue-type"])
		}
		for k, v := range args {
			if q.Arguments[k] != v {
				t.Errorf("%s: %s = %v, want %v", name, k, q.Arguments[k], v)
			}
		}
	}
	for name := range got {
		if want[name] == nil {
			t.Errorf("unexpected queue %s", name)
		}
	}
	_ = b.Close()
	if err := DeleteQueues(b.opts); err != nil {
		t.Fatal(err)
	}
	if left := queuesWith(t, prefix); len(left) > 0 {
		t.Fatalf("DeleteQueues left %v", left)
	}
}

// TestOldDelayQueuesRetire starts on the classic delay queues of an
// earlier version: the empty ones are deleted, one still holding a message
// stays (forwarding it by TTL as before) and counts in Stats, and
// DeleteQueues removes it too.
func TestOldDelayQueuesRetire(t *testing.T) {
	needCtl(t)
	prefix := testPrefix("old-delay")
	ch := rawChannel(t)
	target := prefix + broker.RequestTopic("a")
	oldQ := func(d time.Duration) string { return prefix + "delay." + d.String() + "." + broker.RequestTopic("a") }
	for _, d := range broker.DelayTiers {
		_, err := ch.QueueDeclare(oldQ(d), true, false, false, false, amqp.Table{
			"x-message-ttl": d.Milliseconds(), "x-dead-letter-exchange": "", "x-dead-letter-routing-key": target})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := ch.Publish("", oldQ(time.Hour), false, false, amqp.Publishing{Body: []byte("waiting"),
		Headers: amqp.Table{hdrKey: "w"}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "old delay queue filled", func() bool {
		q, err := ch.QueueDeclarePassive(oldQ(time.Hour), true, false, false, false, nil)
		return err == nil && q.Messages == 1
	})
	b := openTest(t, Options{QueuePrefix: prefix})
	got := queuesWith(t, prefix)
	for _, d := range broker.DelayTiers {
		if _, ok := got[oldQ(d)]; ok != (d == time.Hour) {
			t.Errorf("old delay queue %s: present %v, want %v", oldQ(d), ok, d == time.Hour)
		}
	}
	st, err := b.Stats(context.Background(), broker.RequestTopic("a"))
	if err != nil || st.Depth != 1 {
		t.Fatalf("stats %+v, %v: want the message of the old delay queue counted", st, err)
	}
	_ = b.Close()
	if err := DeleteQueues(b.opts); err != nil {
		t.Fatal(err)
	}
	if left := queuesWith(t, prefix); len(left) > 0 {
		t.Fatalf("DeleteQueues left %v", left)
	}
}

// TestQueueWithoutArguments starts on a request queue an earlier version
// declared without a delivery limit: it cannot be redeclared, so sluice
// uses it as it is and says so, with the policy that would fix it.
func TestQueueWithoutArguments(t *testing.T) {
	prefix := testPrefix("old-args")
	ch := rawChannel(t)
	if _, err := ch.QueueDeclare(prefix+broker.RequestTopic("a"), true, false, false, false,
		amqp.Table{"x-queue-type": "quorum"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = rawChannel(t).QueueDelete(prefix+broker.RequestTopic("a"), false, false, false) })
	logged := make(chan string, 100)
	b := openTest(t, Options{QueuePrefix: prefix, Logf: func(f string, a ...any) { logged <- fmt.Sprintf(f, a...) }})
	topic := broker.RequestTopic("a")
	publishSoon(t, b, topic, deadMsg(1))
	sub, err := b.Subscribe(context.Background(), topic, broker.SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if k := fetchOne(t, sub, 10*time.Second).Message().Key; k != deadMsg(1).Key {
		t.Fatalf("got %q", k)
	}
	select {
	case msg := <-logged:
		t.Log(msg)
		if !strings.Contains(msg, prefix+"requests.a") || !strings.Contains(msg, `"delivery-limit":100`) {
			t.Fatalf("warning %q does not name the queue and the policy", msg)
		}
	default:
		t.Fatal("no warning about the queue without a delivery limit")
	}
}
