package brokertest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/broker"
)

// Factory opens a broker whose topics are declared for backends. Calling it
// again with the same t and restart=true opens the same underlying queues
// again, as a process restarting after a crash would; the previous broker
// has been closed or abandoned by then. The factory only opens the broker:
// the suite runs it (Start) and closes it.
type Factory func(t *testing.T, backends []string, restart bool) broker.Broker

// Start runs b as a process does, Run in a goroutine from now on, until
// the returned stop is called or the test ends (t.Cleanup calls it): stop
// ends Run, waits for it to return, then closes b. It reports an error of
// Run or Close on t; calling it again does nothing.
func Start(t testing.TB, b broker.Broker) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
			if err := b.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// Run runs the suite.
func Run(t *testing.T, factory Factory) {
	var stops sync.Map // broker.Broker -> its stop
	open := func(t *testing.T, backends []string, restart bool) broker.Broker {
		b := factory(t, backends, restart)
		stops.Store(b, Start(t, b))
		return b
	}
	stop := func(b broker.Broker) {
		f, _ := stops.Load(b)
		f.(func())()
	}
	runSuite(t, open, stop)
}

// opener opens and starts a broker; stopper stops and closes one opened so.
type (
	opener  func(t *testing.T, backends []string, restart bool) broker.Broker
	stopper func(broker.Broker)
)

func runSuite(t *testing.T, open opener, stop stopper) {
	t.Run("PublishFetchAck", func(t *testing.T) { testPublishFetchAck(t, open) })
	t.Run("NackRedelivers", func(t *testing.T) { testNack(t, open) })
	t.Run("NotBeforeDoesNotBlock", func(t *testing.T) { testNotBefore(t, open) })
	t.Run("RedeliveryAfterConsumerDies", func(t *testing.T) { testConsumerDies(t, open, stop) })
	t.Run("CloseWhileBusy", func(t *testing.T) { testCloseWhileBusy(t, open) })
	t.Run("Stats", func(t *testing.T) { testStats(t, open) })
	t.Run("DeadLetters", func(t *testing.T) { testDeadLetters(t, open) })
	t.Run("DeadLetterAgainAfterListing", func(t *testing.T) { testDeadLetterAgain(t, open) })
	t.Run("ListDeadKeepsMessages", func(t *testing.T) { testListDeadKeepsMessages(t, open) })
	t.Run("TooLarge", func(t *testing.T) { testTooLarge(t, open) })
	t.Run("SettleThenClose", func(t *testing.T) { testSettleThenClose(t, open) })
	t.Run("TopicsAreSeparate", func(t *testing.T) { testSeparate(t, open) })
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func msg(i int) broker.Message {
	return broker.Message{
		Key:     fmt.Sprintf("k%03d", i),
		Headers: map[string]string{"sluice-n": fmt.Sprint(i), "Mixed-Case": "v"},
		Body:    []byte(fmt.Sprintf(`{"n":%d}`, i)),
	}
}

func publishN(t *testing.T, b broker.Broker, topic string, n int) {
	t.Helper()
	ctx := ctxT(t, 30*time.Second)
	errs := make(chan error, n)
	for i := range n {
		go func() { errs <- b.Publish(ctx, topic, msg(i)) }()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatalf("publish: %v", err)
		}
	}
}

// fetchKeys fetches until n messages arrived or d passed, acking each when ack.
func fetchKeys(t *testing.T, sub broker.Subscription, n int, d time.Duration, ack bool) []string {
	t.Helper()
	ctx := ctxT(t, d)
	var keys []string
	for len(keys) < n {
		ds, err := sub.Fetch(ctx, n-len(keys))
		if err != nil {
			t.Fatalf("fetch after %d of %d messages: %v", len(keys), n, err)
		}
		for _, dl := range ds {
			keys = append(keys, dl.Message().Key)
			if ack {
				if err := dl.Ack(ctx); err != nil {
					t.Fatalf("ack: %v", err)
				}
			}
		}
	}
	return keys
}

// FetchOne fetches one message within d, failing t otherwise.
func FetchOne(t *testing.T, sub broker.Subscription, d time.Duration) broker.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	ds, err := sub.Fetch(ctx, 1)
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	return ds[0]
}

// ExpectNothing fails t if sub hands out a message within d.
func ExpectNothing(t *testing.T, sub broker.Subscription, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if ds, err := sub.Fetch(ctx, 10); err == nil {
		t.Fatalf("expected no message, got %d (first %q)", len(ds), ds[0].Message().Key)
	}
}

func testPublishFetchAck(t *testing.T, open opener) {
	b := open(t, []string{"a"}, false)
	topic := broker.RequestTopic("a")
	publishN(t, b, topic, 50)
	sub, err := b.Subscribe(ctxT(t, 10*time.Second), topic, broker.SubscribeOptions{Prefetch: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	ctx := ctxT(t, 10*time.Second)
	ds, err := sub.Fetch(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	m := ds[0].Message()
	want := msg(0)
	if fmt.Sprint(m.Headers["sluice-n"]) == "" || m.Headers["Mixed-Case"] != "v" {
		t.Fatalf("headers not kept: %v", m.Headers)
	}
	var n int
	fmt.Sscan(m.Headers["sluice-n"], &n)
	if m.Key != msg(n).Key || string(m.Body) != string(msg(n).Body) {
		t.Fatalf("message changed: got key %q body %s, want like %q %s", m.Key, m.Body, want.Key, want.Body)
	}
	_ = ds[0].Ack(ctx)
	keys := fetchKeys(t, sub, 49, 10*time.Second, true)
	seen := map[string]bool{m.Key: true}
	for _, k := range keys {
		if seen[k] {
			t.Fatalf("message %s delivered twice without nack", k)
		}
		seen[k] = true
	}
	if len(seen) != 50 {
		t.Fatalf("got %d distinct messages, want 50", len(seen))
	}
	ExpectNothing(t, sub, 500*time.Millisecond)
}

func testNack(t *testing.T, open opener) {
	b := open(t, []string{"a"}, false)
	topic := broker.RequestTopic("a")
	publishN(t, b, topic, 1)
	sub, err := b.Subscribe(ctxT(t, 10*time.Second), topic, broker.SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	ctx := ctxT(t, 20*time.Second)
	ds, err := sub.Fetch(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := ds[0].Nack(ctx, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	again := fetchKeys(t, sub, 1, 10*time.Second, true)
	if again[0] != "k000" {
		t.Fatalf("redelivered %q, want k000", again[0])
	}
	if el := time.Since(start); el < 250*time.Millisecond {
		t.Fatalf("redelivered after %v, before the nack delay", el)
	}
}

func testNotBefore(t *testing.T, open opener) {
	b := open(t, []string{"a"}, false)
	topic := broker.RequestTopic("a")
	ctx := ctxT(t, 20*time.Second)
	held := msg(0)
	held.NotBefore = time.Now().Add(1500 * time.Millisecond)
	if err := b.Publish(ctx, topic, held); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 5; i++ {
		if err := b.Publish(ctx, topic, msg(i)); err != nil {
			t.Fatal(err)
		}
	}
	sub, err := b.Subscribe(ctx, topic, broker.SubscribeOptions{Prefetch: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	start := time.Now()
	first := fetchKeys(t, sub, 5, 1200*time.Millisecond, true)
	for _, k := range first {
		if k == held.Key {
			t.Fatalf("held-back message delivered early")
		}
	}
	last := fetchKeys(t, sub, 1, 10*time.Second, true)
	if last[0] != held.Key {
		t.Fatalf("got %q, want the held-back %q", last[0], held.Key)
	}
	if el := time.Since(start); el < 1200*time.Millisecond {
		t.Fatalf("held-back message came after %v, before its time", el)
	}
}

func testConsumerDies(t *testing.T, open opener, stop stopper) {
	b := open(t, []string{"a"}, false)
	topic := broker.RequestTopic("a")
	publishN(t, b, topic, 10)
	sub, err := b.Subscribe(ctxT(t, 10*time.Second), topic, broker.SubscribeOptions{Prefetch: 4})
	if err != nil {
		t.Fatal(err)
	}
	acked := fetchKeys(t, sub, 4, 10*time.Second, true)
	taken := fetchKeys(t, sub, 3, 10*time.Second, false) // the consumer dies with these
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	stop(b)

	b2 := open(t, []string{"a"}, true)
	sub2, err := b2.Subscribe(ctxT(t, 10*time.Second), topic, broker.SubscribeOptions{Prefetch: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer sub2.Close()
	rest := fetchKeys(t, sub2, 6, 30*time.Second, true)
	got := map[string]bool{}
	for _, k := range rest {
		got[k] = true
	}
	for _, k := range taken {
		if !got[k] {
			t.Errorf("unacked %s not redelivered after the consumer died (got %v)", k, rest)
		}
	}
	for _, k := range acked {
		if got[k] {
			t.Errorf("acked %s delivered again", k)
		}
	}
}

func testCloseWhileBusy(t *testing.T, open opener) {
	b := open(t, []string{"a"}, false)
	topic := broker.RequestTopic("a")
	publishN(t, b, topic, 20)
	sub, err := b.Subscribe(ctxT(t, 10*time.Second), topic, broker.SubscribeOptions{Prefetch: 16})
	if err != nil {
		t.Fatal(err)
	}
	// Two in hand, never settled: they come again when the broker's ack
	// deadline says so, which this test does not wait for.
	inHand := fetchKeys(t, sub, 2, 10*time.Second, false)
	ctx := ctxT(t, 10*time.Second)
	done := make(chan []broker.Delivery, 1)
	go func() { ds, _ := sub.Fetch(ctx, 1); done <- ds }()
	time.Sleep(50 * time.Millisecond) // let that Fetch wait, most likely in the buffer
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	var fetching []broker.Delivery
	select {
	case fetching = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Fetch did not return after Close")
	}
	for _, d := range fetching { // returned while Close ran: in hand as well
		inHand = append(inHand, d.Message().Key)
	}
	// Everything else, buffered by the closed subscription or never
	// fetched, comes to the next one.
	want := map[string]bool{}
	for i := range 20 {
		if k := msg(i).Key; !slices.Contains(inHand, k) {
			want[k] = true
		}
	}
	sub2, err := b.Subscribe(ctx, topic, broker.SubscribeOptions{Prefetch: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer sub2.Close()
	fctx := ctxT(t, 20*time.Second)
	for len(want) > 0 {
		ds, err := sub2.Fetch(fctx, 16)
		if err != nil {
			t.Fatalf("buffered messages lost on close: %d never came again (%v): %v", len(want), slices.Sorted(maps.Keys(want)), err)
		}
		for _, d := range ds {
			delete(want, d.Message().Key)
			if err := d.Ack(fctx); err != nil {
				t.Fatalf("ack: %v", err)
			}
		}
	}
}

func testStats(t *testing.T, open opener) {
	b := open(t, []string{"a"}, false)
	topic := broker.RequestTopic("a")
	publishN(t, b, topic, 10)
	ctx := ctxT(t, 20*time.Second)
	st, err := b.Stats(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	if st.Depth != 10 {
		t.Fatalf("depth %d, want 10", st.Depth)
	}
	sub, err := b.Subscribe(ctx, topic, broker.SubscribeOptions{Prefetch: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	fetchKeys(t, sub, 4, 10*time.Second, true)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err = b.Stats(ctx, topic)
		if err == nil && st.Depth == 6 && st.Consumed >= 4 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 4 acks: stats %+v (err %v), want depth 6, consumed >= 4", st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func positions(list []broker.DeadLetter, keys ...string) []string {
	var pos []string
	for _, d := range list {
		if len(keys) == 0 || slices.Contains(keys, d.Key) {
			pos = append(pos, d.Pos)
		}
	}
	return pos
}

func deadKeys(t *testing.T, b broker.Broker, topic string) []string {
	t.Helper()
	list, err := b.ListDead(ctxT(t, 20*time.Second), topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, d := range list {
		keys = append(keys, d.Key)
	}
	sort.Strings(keys)
	return keys
}

func testDeadLetters(t *testing.T, open opener) {
	b := open(t, []string{"a"}, false)
	topic := broker.DeadLetterTopic("a")
	publishN(t, b, topic, 5)
	ctx := ctxT(t, 20*time.Second)
	list, err := b.ListDead(ctx, topic, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 3 {
		t.Fatalf("listed %d, want 3", len(list))
	}
	for _, d := range list {
		if d.Pos == "" || d.Key == "" || d.Headers["sluice-n"] == "" {
			t.Fatalf("listed dead letter without position, key or headers: %+v", d)
		}
		if d.Body != nil {
			t.Fatalf("a listing carries bodies (%d bytes): it must hold metadata only", len(d.Body))
		}
	}
	all, err := b.ListDead(ctx, topic, 0)
	if err != nil || len(all) != 5 {
		t.Fatalf("list all: %d, %v", len(all), err)
	}
	// Bodies are read by position, in the order asked.
	read, err := b.ReadDead(ctx, topic, []string{all[3].Pos, all[1].Pos})
	if err != nil || len(read) != 2 {
		t.Fatalf("read by position: %d, %v", len(read), err)
	}
	for i, want := range []broker.DeadLetter{all[3], all[1]} {
		var n int
		fmt.Sscan(read[i].Headers["sluice-n"], &n)
		if read[i].Pos != want.Pos || read[i].Key != want.Key || string(read[i].Body) != string(msg(n).Body) {
			t.Fatalf("read %d: %+v, want %s with its body", i, read[i], want.Key)
		}
	}
	if err := b.TakeDead(ctx, topic, positions(all, "k001", "k003")); err != nil {
		t.Fatal(err)
	}
	if keys := deadKeys(t, b, topic); fmt.Sprint(keys) != "[k000 k002 k004]" {
		t.Fatalf("left %v, want [k000 k002 k004]", keys)
	}
	if read, err := b.ReadDead(ctx, topic, positions(all, "k001", "k002")); err != nil || len(read) != 1 || read[0].Key != "k002" {
		t.Fatalf("read of a taken and a live position: %+v, %v; want only k002", read, err)
	}
	// Taking a position twice is harmless.
	if err := b.TakeDead(ctx, topic, positions(all, "k001")); err != nil {
		t.Fatal(err)
	}
	if err := b.TakeDead(ctx, topic, positions(all)); err != nil {
		t.Fatalf("take all: %v", err)
	}
	if keys := deadKeys(t, b, topic); len(keys) != 0 {
		t.Fatalf("%v left after taking all", keys)
	}
}

// testDeadLetterAgain is a replay whose request fails again before the
// replay takes the old copy: the new copy has the same key and must stay.
func testDeadLetterAgain(t *testing.T, open opener) {
	b := open(t, []string{"a"}, false)
	topic := broker.DeadLetterTopic("a")
	publishN(t, b, topic, 3)
	ctx := ctxT(t, 20*time.Second)
	list, err := b.ListDead(ctx, topic, 0)
	if err != nil || len(list) != 3 {
		t.Fatalf("list: %d, %v", len(list), err)
	}
	again := msg(1)
	again.Headers["sluice-n"] = "again"
	if err := b.Publish(ctx, topic, again); err != nil {
		t.Fatal(err)
	}
	if err := b.TakeDead(ctx, topic, positions(list)); err != nil {
		t.Fatal(err)
	}
	left, err := b.ListDead(ctx, topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 1 || left[0].Key != "k001" || left[0].Headers["sluice-n"] != "again" {
		t.Fatalf("after taking the listed three: %+v, want only the new k001", left)
	}
}

// testListDeadKeepsMessages lists far more often than a quorum queue's
// default delivery limit (20 on RabbitMQ 4.x): listing must not redeliver.
func testListDeadKeepsMessages(t *testing.T, open opener) {
	b := open(t, []string{"a"}, false)
	topic := broker.DeadLetterTopic("a")
	publishN(t, b, topic, 4)
	ctx := ctxT(t, 60*time.Second)
	for i := range 30 {
		list, err := b.ListDead(ctx, topic, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 4 {
			t.Fatalf("listing %d found %d dead letters, want 4", i+1, len(list))
		}
	}
}

// testTooLarge publishes messages over the broker's size limit: each fails
// with ErrTooLarge, and the broker keeps taking normal messages after.
func testTooLarge(t *testing.T, open opener) {
	b := open(t, []string{"a"}, false)
	lim, ok := b.(interface{ MaxMessageBytes() int })
	if !ok {
		t.Fatalf("%T does not report MaxMessageBytes", b)
	}
	topic := broker.RequestTopic("a")
	big := msg(0)
	big.Body = make([]byte, lim.MaxMessageBytes()+1024)
	ctx := ctxT(t, 60*time.Second)
	for i := range 6 {
		err := b.Publish(ctx, topic, big)
		if !errors.Is(err, broker.ErrTooLarge) {
			t.Fatalf("oversized publish %d: %v, want ErrTooLarge", i+1, err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := b.Publish(pctx, topic, msg(1))
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("publishing stopped working after oversized messages: %v", err)
		}
	}
	sub, err := b.Subscribe(ctx, topic, broker.SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if k := fetchKeys(t, sub, 1, 10*time.Second, true); k[0] != "k001" {
		t.Fatalf("got %q, want k001", k[0])
	}
}

// testSettleThenClose is a graceful stop: fetching stops, the deliveries in
// hand are settled, then the subscription closes. None of them comes again;
// the ones never returned by Fetch do.
func testSettleThenClose(t *testing.T, open opener) {
	b := open(t, []string{"a"}, false)
	topic := broker.RequestTopic("a")
	publishN(t, b, topic, 10)
	sub, err := b.Subscribe(ctxT(t, 10*time.Second), topic, broker.SubscribeOptions{Prefetch: 8})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 20*time.Second)
	var held []broker.Delivery
	for len(held) < 4 {
		ds, err := sub.Fetch(ctx, 4-len(held))
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, ds...)
	}
	time.Sleep(200 * time.Millisecond) // "in flight" while the rest sits in the prefetch buffer
	var settled []string
	for _, d := range held {
		settled = append(settled, d.Message().Key)
		if err := d.Ack(ctx); err != nil {
			t.Fatalf("ack before close: %v", err)
		}
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	sub2, err := b.Subscribe(ctx, topic, broker.SubscribeOptions{Prefetch: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer sub2.Close()
	rest := fetchKeys(t, sub2, 6, 30*time.Second, true)
	for _, k := range rest {
		if slices.Contains(settled, k) {
			t.Fatalf("%s was acknowledged before Close and came again", k)
		}
	}
	ExpectNothing(t, sub2, time.Second)
}

func testSeparate(t *testing.T, open opener) {
	b := open(t, []string{"a", "b"}, false)
	ctx := ctxT(t, 20*time.Second)
	if err := b.Publish(ctx, broker.RequestTopic("a"), msg(1)); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, broker.ResultTopic, msg(2)); err != nil {
		t.Fatal(err)
	}
	sub, err := b.Subscribe(ctx, broker.RequestTopic("b"), broker.SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	ExpectNothing(t, sub, 300*time.Millisecond)
	res, err := b.Subscribe(ctx, broker.ResultTopic, broker.SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	if k := fetchKeys(t, res, 1, 5*time.Second, true); k[0] != "k002" {
		t.Fatalf("results got %q", k[0])
	}
	if err := b.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}
	if err := b.Publish(ctx, "requests.nope", msg(3)); err == nil || errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("publish to an undeclared topic: %v", err)
	}
}
