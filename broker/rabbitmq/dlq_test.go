package rabbitmq

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/internal/wait"
)

func deadMsg(i int) broker.Message {
	return broker.Message{Key: fmt.Sprintf("d%02d", i), Headers: map[string]string{"sluice-n": fmt.Sprint(i)},
		Body: []byte(fmt.Sprintf(`{"n":%d}`, i))}
}

// TestListingSpendsNoDeliveries lists dead letters more often than a
// RabbitMQ 4.x quorum queue's default delivery limit (20), set here by a
// policy on the test's queues: listing must not count as a delivery. A
// dead-letter queue read with basic.get and requeue lost every dead letter
// at the 21st listing.
func TestListingSpendsNoDeliveries(t *testing.T) {
	needCtl(t)
	prefix := testPrefix("dl-limit")
	policy := "sluice-test-" + prefix
	ctlOutput(t, "set_policy", policy, "^"+regexp.QuoteMeta(prefix), `{"delivery-limit":20}`, "--apply-to", "queues")
	t.Cleanup(func() { ctlOutput(t, "clear_policy", policy) })
	b := openTest(t, Options{QueuePrefix: prefix})
	topic := broker.DeadLetterTopic("a")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range 5 {
		if err := b.Publish(ctx, topic, deadMsg(i)); err != nil {
			t.Fatal(err)
		}
	}
	for n := range 30 {
		list, err := b.ListDead(ctx, topic, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 5 {
			t.Fatalf("listing %d found %d dead letters, want 5", n+1, len(list))
		}
		for i, d := range list {
			if d.Key != deadMsg(i).Key || d.Body != nil || d.Headers["sluice-n"] != fmt.Sprint(i) {
				t.Fatalf("listing %d: dead letter %d is %+v, want %+v without its body", n+1, i, d, deadMsg(i))
			}
		}
	}
	list, err := b.ListDead(ctx, topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	checkBodies(t, b, topic, list, 5)
}

// checkBodies reads the listed dead letters by position: each has the body
// deadMsg gave it, and there are n.
func checkBodies(t *testing.T, b *Broker, topic string, list []broker.DeadLetter, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var pos []string
	for _, d := range list {
		pos = append(pos, d.Pos)
	}
	read, err := b.ReadDead(ctx, topic, pos)
	if err != nil {
		t.Fatal(err)
	}
	if len(read) != n {
		t.Fatalf("read %d dead letters by position, want %d", len(read), n)
	}
	for i, d := range read {
		var k int
		fmt.Sscan(d.Headers["sluice-n"], &k)
		if d.Pos != list[i].Pos || d.Key != list[i].Key || string(d.Body) != string(deadMsg(k).Body) {
			t.Fatalf("read %d: %+v, want %s with the body %s", i, d, list[i].Key, deadMsg(k).Body)
		}
	}
}

// TestPoisonMessageIsDeadLettered is a message that kills every consumer
// that takes it: after DeliveryLimit hand-backs it ends in the dead-letter
// stream, listed with its key, instead of looping forever (RabbitMQ 3.x)
// or being dropped (4.x).
func TestPoisonMessageIsDeadLettered(t *testing.T) {
	b := openTest(t, Options{DeliveryLimit: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	poison := deadMsg(7)
	if err := b.Publish(ctx, broker.RequestTopic("a"), poison); err != nil {
		t.Fatal(err)
	}
	deliveries := 0
	for {
		list, err := b.ListDead(ctx, broker.DeadLetterTopic("a"), 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) == 1 {
			if d := list[0]; d.Key != poison.Key || d.Headers["sluice-n"] != "7" {
				t.Fatalf("dead letter %+v, want %+v", d, poison)
			}
			checkBodies(t, b, broker.DeadLetterTopic("a"), list, 1)
			break
		}
		if deliveries > 5 {
			t.Fatalf("delivered %d times with a delivery limit of 2, not dead-lettered (listed %d)", deliveries, len(list))
		}
		// The consumer dies holding it.
		sub, err := b.Subscribe(ctx, broker.RequestTopic("a"), broker.SubscribeOptions{Prefetch: 1})
		if err != nil {
			t.Fatal(err)
		}
		fctx, fcancel := context.WithTimeout(ctx, 3*time.Second)
		ds, err := sub.Fetch(fctx, 1)
		fcancel()
		_ = sub.Close()
		if err == nil {
			deliveries++
			if ds[0].Message().Key != poison.Key {
				t.Fatalf("fetched %q", ds[0].Message().Key)
			}
		}
	}
	if deliveries != 3 {
		t.Errorf("dead-lettered after %d deliveries, want 3 (the first and 2 more)", deliveries)
	}
	st, err := b.Stats(ctx, broker.RequestTopic("a"))
	if err != nil || st.Depth != 0 {
		t.Fatalf("request queue after dead-lettering: %+v, %v; want empty", st, err)
	}
}

// TestOldDeadLetterQueueMoves starts on a deployment of an earlier version,
// whose dead letters sit in a quorum queue named after the topic: they are
// listed from the stream, with their headers, and the old queue is gone.
func TestOldDeadLetterQueueMoves(t *testing.T) {
	prefix := testPrefix("dl-move")
	old := prefix + broker.DeadLetterTopic("a")
	ch := rawChannel(t)
	if _, err := ch.QueueDeclare(old, true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = rawChannel(t).QueueDelete(old, false, false, false) })
	for i := range 300 { // more than one batch of the move
		m := deadMsg(i)
		err := ch.Publish("", old, false, false, amqp.Publishing{DeliveryMode: amqp.Persistent, MessageId: m.Key,
			Headers: amqp.Table{hdrKey: m.Key, "sluice-n": m.Headers["sluice-n"]}, Body: m.Body})
		if err != nil {
			t.Fatal(err)
		}
	}
	wait.For(t, 10*time.Second, "old queue filled", func() bool {
		q, err := ch.QueueDeclarePassive(old, true, false, false, false, nil)
		return err == nil && q.Messages == 300
	})
	var logged logTo
	b := openTest(t, Options{QueuePrefix: prefix, Log: logged.logger()})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := b.ListDead(ctx, broker.DeadLetterTopic("a"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 300 {
		t.Fatalf("listed %d dead letters after the move, want 300 (log: %v)", len(list), logged.lines)
	}
	for i, d := range list {
		if d.Key != deadMsg(i).Key || d.Headers["sluice-n"] != fmt.Sprint(i) {
			t.Fatalf("dead letter %d moved as %+v", i, d)
		}
	}
	checkBodies(t, b, broker.DeadLetterTopic("a"), list, 300)
	_, err = rawChannel(t).QueueDeclarePassive(old, true, false, false, false, nil)
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.NotFound {
		t.Fatalf("old dead-letter queue still there after the move: %v", err)
	}
}

// TestTakeKeepsLaterCopies takes listed dead letters while other copies of
// the same keys arrive, over several rounds, as replays that fail again do.
func TestTakeKeepsLaterCopies(t *testing.T) {
	b := openTest(t, Options{})
	topic := broker.DeadLetterTopic("a")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range 3 {
		if err := b.Publish(ctx, topic, deadMsg(i)); err != nil {
			t.Fatal(err)
		}
	}
	for round := range 4 {
		list, err := b.ListDead(ctx, topic, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 3 {
			t.Fatalf("round %d: listed %d, want 3", round, len(list))
		}
		var pos []string
		for i, d := range list {
			if want := fmt.Sprint(round); round > 0 && d.Headers["round"] != want {
				t.Fatalf("round %d: dead letter %d is from round %q", round, i, d.Headers["round"])
			}
			again := d.Message
			again.Headers["round"] = fmt.Sprint(round + 1)
			if err := b.Publish(ctx, topic, again); err != nil {
				t.Fatal(err)
			}
			pos = append(pos, d.Pos)
		}
		if err := b.TakeDead(ctx, topic, pos); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.TakeDead(ctx, topic, []string{"not-a-position"}); err == nil {
		t.Fatal("a position that is no offset was taken")
	}
}

// TestDeadBodiesReadByPosition lists dead letters of 256 KiB each: the
// listing holds no body, and ReadDead returns the bodies asked for, in the
// order asked, reading the stream from the smallest position asked for,
// not from its start. It leaves out a position taken after the listing and
// one that holds a fence; a malformed position is an error. A taken mark
// naming an offset not written yet takes nothing, for listings and reads
// alike.
func TestDeadBodiesReadByPosition(t *testing.T) {
	b := openTest(t, Options{})
	topic := broker.DeadLetterTopic("a")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	big := func(i int) broker.Message {
		m := deadMsg(i)
		m.Body = bytes.Repeat([]byte{byte('a' + i%26)}, 256<<10)
		return m
	}
	for i := range 30 {
		if err := b.Publish(ctx, topic, big(i)); err != nil {
			t.Fatal(err)
		}
	}
	list, err := b.ListDead(ctx, topic, 0)
	if err != nil || len(list) != 30 {
		t.Fatalf("listed %d, %v; want 30", len(list), err)
	}
	for i, d := range list {
		if d.Key != big(i).Key || d.Body != nil {
			t.Fatalf("listed %d: key %q with %d bytes of body, want %q without its body", i, d.Key, len(d.Body), big(i).Key)
		}
	}
	if err := b.TakeDead(ctx, topic, []string{list[5].Pos}); err != nil {
		t.Fatal(err)
	}
	read, err := b.ReadDead(ctx, topic, []string{list[29].Pos, list[5].Pos, list[12].Pos})
	if err != nil {
		t.Fatal(err)
	}
	if len(read) != 2 {
		t.Fatalf("read %d dead letters, want 2 (the taken one left out)", len(read))
	}
	for i, n := range []int{29, 12} {
		if d := read[i]; d.Pos != list[n].Pos || d.Key != big(n).Key || !bytes.Equal(d.Body, big(n).Body) {
			t.Fatalf("read %d: %s at %s with %d bytes, want %s at %s with its body", i, d.Key, d.Pos, len(d.Body), big(n).Key, list[n].Pos)
		}
	}
	last, _ := strconv.ParseInt(list[29].Pos, 10, 64)
	if read, err := b.ReadDead(ctx, topic, []string{strconv.FormatInt(last+1, 10)}); err != nil || len(read) != 0 {
		t.Fatalf("read of the listing's fence: %d dead letters, %v; want none", len(read), err)
	}
	before := b.deadScanned.Load()
	if read, err := b.ReadDead(ctx, topic, []string{list[28].Pos, list[29].Pos}); err != nil || len(read) != 2 {
		t.Fatalf("read the last two: %d, %v", len(read), err)
	}
	n := b.deadScanned.Load() - before
	t.Logf("reading the last two dead letters went through %d stream messages", n)
	if n > 12 {
		t.Fatalf("reading the last two dead letters went through %d stream messages: it did not start at the smallest position", n)
	}
	if _, err := b.ReadDead(ctx, topic, []string{"x"}); err == nil {
		t.Fatal("a position that is no offset was read")
	}

	// A mark naming an offset that more dead letters will fill: it takes
	// nothing, in listings and reads alike.
	future := strconv.FormatInt(last+20, 10)
	if err := b.TakeDead(ctx, topic, []string{future}); err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		if err := b.Publish(ctx, topic, deadMsg(100+i)); err != nil {
			t.Fatal(err)
		}
	}
	list, err = b.ListDead(ctx, topic, 0)
	if err != nil || len(list) != 59 {
		t.Fatalf("listed %d, %v; want 59", len(list), err)
	}
	if !slices.ContainsFunc(list, func(d broker.DeadLetter) bool { return d.Pos == future }) {
		t.Fatalf("the dead letter at %s is not listed: a mark written before it took it", future)
	}
	if read, err := b.ReadDead(ctx, topic, []string{future}); err != nil || len(read) != 1 {
		t.Fatalf("read of %s: %d, %v; want the dead letter there", future, len(read), err)
	}
}
