package rabbitmq

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/broker/brokertest"
	"github.com/sluice-gw/sluice/internal/wait"
)

// TestTopology checks what Open declares: request queues with an explicit
// delivery limit, dead-lettering at least once into their backend's
// stream; a results queue and delay tiers without any (on RabbitMQ 4.x an
// explicit -1: unlimited); delay tiers that are quorum queues (they survive
// a node loss) dead-lettering at least once to their target. DeleteQueues
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
	// No limit: none on 3.x, where a negative one means 0; -1 on 4.x,
	// where none means 20.
	var unlimited any
	if serverMajor(b.current().sub.Properties) >= 4 {
		unlimited = -1.0
	}
	want := map[string]map[string]any{
		prefix + "dlq-stream.a": {"x-queue-type": "stream"},
		prefix + "requests.a": {"x-queue-type": "quorum", "x-delivery-limit": 7.0, "x-dead-letter-exchange": "",
			"x-dead-letter-routing-key": prefix + "dlq-stream.a", "x-dead-letter-strategy": "at-least-once",
			"x-overflow": "reject-publish"},
		prefix + "results": {"x-queue-type": "quorum", "x-delivery-limit": unlimited},
	}
	for _, target := range []string{"requests.a", "results"} {
		for _, d := range broker.DelayTiers {
			want[prefix+"delay-quorum."+d.String()+"."+target] = map[string]any{"x-queue-type": "quorum",
				"x-delivery-limit": unlimited, "x-message-ttl": float64(d.Milliseconds()), "x-dead-letter-exchange": "",
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
	stopTest(b)
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
	wait.For(t, 10*time.Second, "old delay queue filled", func() bool {
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
	stopTest(b)
	if err := DeleteQueues(b.opts); err != nil {
		t.Fatal(err)
	}
	if left := queuesWith(t, prefix); len(left) > 0 {
		t.Fatalf("DeleteQueues left %v", left)
	}
}

// The arguments earlier versions declared queues with.
var (
	// plainArgs: versions before delivery limits.
	plainArgs = amqp.Table{"x-queue-type": "quorum"}
	// limit100Args: the version before this one, for its results queue.
	limit100Args = amqp.Table{"x-queue-type": "quorum", "x-delivery-limit": int64(100)}
)

// limit100DelayArgs are the arguments the version before this one declared
// delay queues with: a delivery limit of 100.
func limit100DelayArgs(tier time.Duration, target string) amqp.Table {
	return amqp.Table{"x-queue-type": "quorum", "x-delivery-limit": int64(100), "x-message-ttl": tier.Milliseconds(),
		"x-dead-letter-exchange": "", "x-dead-letter-routing-key": target, "x-dead-letter-strategy": "at-least-once",
		"x-overflow": "reject-publish"}
}

// fill declares queue with args, as an earlier version would have, and
// puts messages with keys in it, confirmed.
func fill(t *testing.T, queue string, args amqp.Table, hdr amqp.Table, keys ...string) {
	t.Helper()
	ch := rawChannel(t)
	if _, err := ch.QueueDeclare(queue, true, false, false, false, args); err != nil {
		t.Fatalf("declare %s: %v", queue, err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	var dcs []*amqp.DeferredConfirmation
	for _, k := range keys {
		h := amqp.Table{hdrKey: k}
		for n, v := range hdr {
			h[n] = v
		}
		dc, err := ch.PublishWithDeferredConfirm("", queue, true, false, amqp.Publishing{DeliveryMode: amqp.Persistent,
			MessageId: k, Headers: h, Body: []byte(k)})
		if err != nil {
			t.Fatal(err)
		}
		dcs = append(dcs, dc)
	}
	for _, dc := range dcs {
		if !dc.Wait() {
			t.Fatalf("publish to %s not confirmed", queue)
		}
	}
}

func keys(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%03d", prefix, i)
	}
	return out
}

// consumeAll fetches until it has every one of want from topic, each with
// its body, and nothing else comes within a moment.
func consumeAll(t *testing.T, b *Broker, topic string, want []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sub, err := b.Subscribe(ctx, topic, broker.SubscribeOptions{Prefetch: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	missing := map[string]bool{}
	for _, k := range want {
		missing[k] = true
	}
	for len(missing) > 0 {
		ds, err := sub.Fetch(ctx, 64)
		if err != nil {
			t.Fatalf("%s: %d of %d messages missing: %v", topic, len(missing), len(want), err)
		}
		for _, d := range ds {
			m := d.Message()
			if !missing[m.Key] || string(m.Body) != m.Key {
				t.Errorf("%s: unexpected or duplicate message %q (body %q)", topic, m.Key, m.Body)
			}
			delete(missing, m.Key)
			_ = d.Ack(ctx)
		}
	}
	fctx, fcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer fcancel()
	if ds, err := sub.Fetch(fctx, 1); err == nil {
		t.Fatalf("%s: one more message than there were: %q", topic, ds[0].Message().Key)
	}
}

// checkDeclared fails unless every queue of b's topology exists with the
// arguments b declares, and no temporary or lock queue is left.
func checkDeclared(t *testing.T, b *Broker) {
	t.Helper()
	got := queuesWith(t, b.opts.QueuePrefix)
	for _, d := range b.decls(serverMajor(b.current().sub.Properties)) {
		q, ok := got[d.name]
		if !ok {
			t.Errorf("%s missing", d.name)
			continue
		}
		for _, k := range []string{"x-queue-type", "x-delivery-limit", "x-message-ttl", "x-dead-letter-routing-key",
			"x-dead-letter-strategy", "x-overflow"} {
			want, wok := d.args[k]
			have, hok := q.Arguments[k]
			if n, ok := want.(int64); ok {
				want = float64(n) // as list_queues reports numbers
			}
			if wok != hok || wok && want != have {
				t.Errorf("%s: %s is %v, want %v", d.name, k, have, want)
			}
		}
	}
	for name := range got {
		if strings.HasSuffix(name, ".migrating") || name == b.lockQueue() {
			t.Errorf("%s left behind", name)
		}
	}
}

// logTo collects what a broker logs, a line per entry.
type logTo struct {
	mu    sync.Mutex
	lines []string
}

func (l *logTo) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, string(p))
	return len(p), nil
}

// logger is a Logger writing to l.
func (l *logTo) logger() zerolog.Logger { return zerolog.New(l) }

func (l *logTo) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			return true
		}
	}
	return false
}

// TestOldQueuesMigrate starts on queues an earlier version (or a process
// that died migrating them) left: request and results queues, and delay
// queues, without today's arguments, and temporary queues still holding
// messages. After Open every queue has today's arguments, the temporary
// queues are gone, and every message is there to consume. Before, a
// queue without today's arguments was used as it was: on RabbitMQ 4.x a
// request or results queue of a version without delivery limits dropped
// messages at their 20th hand-back, and one of the version before this
// dropped status events at their 100th.
func TestOldQueuesMigrate(t *testing.T) {
	needCtl(t)
	requests, results := broker.RequestTopic("a"), broker.ResultTopic
	for _, tc := range []struct {
		name  string
		scene func(t *testing.T, prefix string)
		want  map[string][]string // topic -> keys
	}{{
		name: "queues of earlier versions",
		scene: func(t *testing.T, prefix string) {
			// More than one batch of the move; a results queue of the
			// version before, which had a delivery limit.
			fill(t, prefix+requests, plainArgs, nil, keys("r", 300)...)
			fill(t, prefix+results, limit100Args, nil, keys("e", 5)...)
		},
		want: map[string][]string{requests: keys("r", 300), results: keys("e", 5)},
	}, {
		name: "crash while moving out",
		scene: func(t *testing.T, prefix string) {
			fill(t, prefix+requests, plainArgs, nil, keys("r", 10)...)
			fill(t, migratingQueue(prefix+requests), plainArgs, nil, keys("m", 10)...)
		},
		want: map[string][]string{requests: append(keys("r", 10), keys("m", 10)...)},
	}, {
		name: "crash after the delete",
		scene: func(t *testing.T, prefix string) {
			fill(t, migratingQueue(prefix+requests), plainArgs, nil, keys("m", 10)...)
			fill(t, migratingQueue(prefix+results), plainArgs, nil, keys("e", 3)...)
		},
		want: map[string][]string{requests: keys("m", 10), results: keys("e", 3)},
	}, {
		name: "crash while moving back",
		scene: func(t *testing.T, prefix string) {
			b := newBroker(Options{QueuePrefix: prefix, Backends: []string{"a"}})
			fill(t, prefix+requests, b.requestArgs("a"), nil, keys("r", 4)...)
			fill(t, migratingQueue(prefix+requests), plainArgs, nil, keys("m", 6)...)
		},
		want: map[string][]string{requests: append(keys("r", 4), keys("m", 6)...)},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := testPrefix("migrate")
			tc.scene(t, prefix)
			t.Cleanup(func() { _ = DeleteQueues(Options{URL: amqpURL(), QueuePrefix: prefix, Backends: []string{"a"}}) })
			var log logTo
			b := openTest(t, Options{QueuePrefix: prefix, Log: log.logger()})
			checkDeclared(t, b)
			for topic, want := range tc.want {
				consumeAll(t, b, topic, want)
			}
			t.Log(log.lines)
		})
	}
}

// TestOldDelayQueueMigrates starts on a delay queue of the version before
// this one (with a delivery limit) holding a held-back request: the delay
// queue gets today's arguments, the request waits on in the request queue's
// consumer or a delay tier, and comes when it is due.
func TestOldDelayQueueMigrates(t *testing.T) {
	needCtl(t)
	prefix := testPrefix("migrate-delay")
	topic := broker.RequestTopic("a")
	nb := time.Now().Add(2500 * time.Millisecond)
	fill(t, prefix+"delay-quorum.1h0m0s."+topic, limit100DelayArgs(time.Hour, prefix+topic),
		amqp.Table{hdrNotBefore: strconv.FormatInt(nb.UnixNano(), 10)}, "held")
	t.Cleanup(func() { _ = DeleteQueues(Options{URL: amqpURL(), QueuePrefix: prefix, Backends: []string{"a"}}) })
	b := openTest(t, Options{QueuePrefix: prefix})
	checkDeclared(t, b)
	sub, err := b.Subscribe(context.Background(), topic, broker.SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	d := brokertest.FetchOne(t, sub, 20*time.Second)
	if d.Message().Key != "held" {
		t.Fatalf("got %q", d.Message().Key)
	}
	if now := time.Now(); now.Before(nb) {
		t.Fatalf("held-back request delivered %v early", nb.Sub(now))
	}
	_ = d.Ack(context.Background())
}

// TestQueueInUseIsNotMigrated starts on a request queue without today's
// arguments that another process consumes (an earlier version still
// running): it is used as it is, with a warning, and nothing is lost. Once
// nobody consumes it, the next start migrates it.
func TestQueueInUseIsNotMigrated(t *testing.T) {
	needCtl(t)
	prefix := testPrefix("migrate-busy")
	queue, topic := prefix+broker.RequestTopic("a"), broker.RequestTopic("a")
	fill(t, queue, plainArgs, nil, keys("r", 5)...)
	t.Cleanup(func() { _ = DeleteQueues(Options{URL: amqpURL(), QueuePrefix: prefix, Backends: []string{"a"}}) })
	other := rawChannel(t)
	if err := other.Qos(1, 0, false); err != nil {
		t.Fatal(err)
	}
	taken, err := other.Consume(queue, "earlier-version", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-taken: // it holds one, unacknowledged
	case <-time.After(10 * time.Second):
		t.Fatal("the other consumer got nothing")
	}
	var log logTo
	opts := Options{URL: amqpURL(), QueuePrefix: prefix, Backends: []string{"a"}, Log: log.logger()}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !log.has("but processes consume it") {
		t.Errorf("no warning that %s is in use: %v", queue, log.lines)
	}
	if q := queuesWith(t, prefix)[queue]; q.Arguments["x-delivery-limit"] != nil {
		t.Fatalf("%s migrated under its consumer: %+v", queue, q)
	}
	_ = b.Close()
	if err := other.Close(); err != nil { // the message it held goes back
		t.Fatal(err)
	}
	b = openTest(t, opts)
	checkDeclared(t, b)
	consumeAll(t, b, topic, keys("r", 5))
}

// TestProcessesMigrateTogether starts two processes at once on a request
// queue without today's arguments: one migrates it while the other waits,
// and no message is lost (the other could have deleted the queue after the
// first declared it again and moved its messages back).
func TestProcessesMigrateTogether(t *testing.T) {
	needCtl(t)
	prefix := testPrefix("migrate-two")
	topic := broker.RequestTopic("a")
	fill(t, prefix+topic, plainArgs, nil, keys("r", 1000)...)
	var log logTo
	var wg sync.WaitGroup
	bs := make([]*Broker, 2)
	for i := range bs {
		wg.Add(1)
		go func() { defer wg.Done(); bs[i] = openTest(t, Options{QueuePrefix: prefix, Log: log.logger()}) }()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	checkDeclared(t, bs[0])
	consumeAll(t, bs[1], topic, keys("r", 1000))
	n := 0
	for _, line := range log.lines {
		if strings.Contains(line, "migrated") {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("the queue was migrated %d times, want once: %v", n, log.lines)
	}
}

// TestServerVersion reads the version RabbitMQ announces, and what it
// means for a queue that must never drop a message.
func TestServerVersion(t *testing.T) {
	needRabbit(t)
	conn, err := amqp.Dial(amqpURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if major := serverMajor(conn.Properties); major < 3 {
		t.Fatalf("server version %v read as %d", conn.Properties["version"], major)
	}
	for _, tc := range []struct {
		version any
		limit   any
	}{
		{"3.10.8", nil}, {"3.13.7", nil}, {"4.0.5", int64(-1)}, {"4.1.0-beta.3", int64(-1)}, {"10.0", int64(-1)},
		{"", nil}, {"unknown", nil}, {nil, nil}, {int64(4), nil},
	} {
		args := unlimited(serverMajor(amqp.Table{"version": tc.version}), amqp.Table{})
		if args["x-delivery-limit"] != tc.limit {
			t.Errorf("version %v: x-delivery-limit %v, want %v", tc.version, args["x-delivery-limit"], tc.limit)
		}
	}
}
