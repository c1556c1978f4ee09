package workers

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/internal/wait"
	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/wire"
)

// batchOf packs the requests ids into one delivery.
func batchOf(log *actionLog, ids ...string) *fakeDelivery {
	msgs := make([]broker.Message, len(ids))
	for i, id := range ids {
		msgs[i] = wire.EncodeRequest(request(id))
	}
	return &fakeDelivery{msg: wire.Pack(msgs), log: log}
}

func keys(ds []broker.Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.Message().Key
	}
	return out
}

func within() time.Duration { return time.Second }

// A batch hands out its requests as Fetch asks, keeps the rest, and is
// acknowledged once, after its last request settled; what was handed back
// is queued again alone, with its delay, before the batch is acknowledged.
func TestUnpackSettlesTheBatchOnce(t *testing.T) {
	log := &actionLog{}
	b := batchOf(log, "a", "b", "c", "d", "e")
	sub := &fakeSub{ds: []broker.Delivery{b}, log: log}
	br := &fakeBroker{publish: func(string, broker.Message) error { log.add("publish"); return nil }}
	u := newUnpacking(sub, br, "requests.x", nil, zerolog.Nop(), within)
	ctx := context.Background()
	first, err := u.Fetch(ctx, 2)
	if err != nil || fmt.Sprint(keys(first)) != "[a b]" {
		t.Fatalf("first fetch: %v, %v", keys(first), err)
	}
	rest, err := u.Fetch(ctx, 10)
	if err != nil || fmt.Sprint(keys(rest)) != "[c d e]" {
		t.Fatalf("second fetch: %v, %v", keys(rest), err)
	}
	req, err := wire.DecodeRequest(rest[0].Message())
	if err != nil || req.ID != "c" {
		t.Fatalf("a request of a batch decodes as %+v, %v", req, err)
	}
	all := append(first, rest...)
	for i, d := range all {
		if i == 2 {
			continue
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if b.acks+b.nacks != 0 {
		t.Fatal("the batch settled before its last request")
	}
	if err := all[2].Nack(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(log.all()); got != "[publish ack a]" {
		t.Fatalf("actions %s, want the handed-back request queued again, then the batch acknowledged", got)
	}
	again := br.sent()
	if len(again) != 1 || again[0].msg.Key != "c" || wire.IsBatch(again[0].msg) || again[0].topic != "requests.x" ||
		time.Until(again[0].msg.NotBefore) < 50*time.Second {
		t.Fatalf("queued again: %+v", again)
	}
	if err := all[0].Ack(ctx); err == nil {
		t.Fatal("a request settled twice without an error")
	}
	if b.acks != 1 {
		t.Fatalf("batch acknowledged %d times", b.acks)
	}
}

// When the requests handed back cannot be queued again, the whole batch is
// handed back.
func TestUnpackRequeueFailsHandsBackTheBatch(t *testing.T) {
	log := &actionLog{}
	b := batchOf(log, "a", "b")
	sub := &fakeSub{ds: []broker.Delivery{b}, log: log}
	br := &fakeBroker{publish: func(string, broker.Message) error { return broker.ErrUnavailable }}
	u := newUnpacking(sub, br, "requests.x", nil, zerolog.Nop(), within)
	ds, _ := u.Fetch(context.Background(), 10)
	_ = ds[0].Ack(context.Background())
	_ = ds[1].Nack(context.Background(), 0)
	if b.acks != 0 || b.nacks != 1 {
		t.Fatalf("batch acks %d nacks %d, want handed back", b.acks, b.nacks)
	}
}

// A batch handed out again skips the requests already settled.
func TestUnpackSkipsSettled(t *testing.T) {
	log := &actionLog{}
	b := batchOf(log, "a", "b", "c")
	sub := &fakeSub{ds: []broker.Delivery{b}, log: log}
	var asked []string
	settled := func(_ context.Context, ids []string) ([]bool, error) {
		asked = ids
		return []bool{true, false, true}, nil
	}
	u := newUnpacking(sub, &fakeBroker{}, "requests.x", settled, zerolog.Nop(), within)
	ds, _ := u.Fetch(context.Background(), 10)
	if fmt.Sprint(asked) != "[a b c]" || fmt.Sprint(keys(ds)) != "[b]" {
		t.Fatalf("asked %v, delivered %v; want b alone", asked, keys(ds))
	}
	_ = ds[0].Ack(context.Background())
	if b.acks != 1 {
		t.Fatal("batch not acknowledged")
	}
	// All settled: the batch is acknowledged at once, nothing delivered.
	all := batchOf(log, "x", "y")
	u = newUnpacking(&fakeSub{ds: []broker.Delivery{all}, log: log}, &fakeBroker{}, "requests.x",
		func(context.Context, []string) ([]bool, error) { return []bool{true, true}, nil }, zerolog.Nop(), within)
	fctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if ds, err := u.Fetch(fctx, 10); len(ds) != 0 || err != nil || all.acks != 1 {
		t.Fatalf("all settled: delivered %v, %v, batch acks %d", keys(ds), err, all.acks)
	}
	// The store cannot tell: everything is delivered.
	some := batchOf(log, "p", "q")
	u = newUnpacking(&fakeSub{ds: []broker.Delivery{some}, log: log}, &fakeBroker{}, "requests.x",
		func(context.Context, []string) ([]bool, error) { return nil, errors.New("down") }, zerolog.Nop(), within)
	if ds, _ := u.Fetch(context.Background(), 10); len(ds) != 2 {
		t.Fatalf("store down: delivered %v, want both", keys(ds))
	}
}

// Requests kept past holdLimit, a pause or Close are queued again alone, so
// no batch stays unsettled at the broker for long.
func TestUnpackHandsBackBuffered(t *testing.T) {
	for _, how := range []string{"hold limit", "pause", "close"} {
		t.Run(how, func(t *testing.T) {
			log := &actionLog{}
			b := batchOf(log, "a", "b", "c")
			sub := &fakeSub{ds: []broker.Delivery{b}, log: log}
			br := &fakeBroker{}
			u := newUnpacking(sub, br, "requests.x", nil, zerolog.Nop(), within)
			ds, _ := u.Fetch(context.Background(), 1)
			_ = ds[0].Ack(context.Background())
			switch how {
			case "hold limit":
				u.buf[0].at = time.Now().Add(-2 * holdLimit)
				fctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
				defer cancel()
				if ds, _ := u.Fetch(fctx, 10); len(ds) != 0 {
					t.Fatalf("delivered %v after the hold limit", keys(ds))
				}
			case "pause":
				_ = u.Pause(context.Background())
			case "close":
				_ = u.Close()
			}
			var again []string
			for _, p := range br.sent() {
				again = append(again, p.msg.Key)
			}
			sort.Strings(again)
			if fmt.Sprint(again) != "[b c]" || b.acks != 1 {
				t.Fatalf("queued again %v, batch acks %d", again, b.acks)
			}
		})
	}
}

// A malformed batch is dropped (acknowledged), not handed out forever.
func TestUnpackMalformedBatch(t *testing.T) {
	log := &actionLog{}
	bad := &fakeDelivery{msg: broker.Message{Key: "k", Headers: map[string]string{wire.HBatch: "2"}, Body: []byte("junk")}, log: log}
	good := &fakeDelivery{msg: wire.EncodeRequest(request("z")), log: log}
	u := newUnpacking(&fakeSub{ds: []broker.Delivery{bad, good}, log: log}, &fakeBroker{}, "requests.x", nil, zerolog.Nop(), within)
	ds, err := u.Fetch(context.Background(), 10)
	if err != nil || fmt.Sprint(keys(ds)) != "[z]" || bad.acks != 1 {
		t.Fatalf("delivered %v, %v; malformed batch acks %d", keys(ds), err, bad.acks)
	}
}

// A pool delivers every request of a batch to the backend once, and
// acknowledges the batch once.
func TestPoolDeliversABatch(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	got := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got[r.Header.Get("X-Request-Id")]++
		mu.Unlock()
	}))
	defer srv.Close()
	log := &actionLog{}
	ids := make([]string, 150)
	for i := range ids {
		ids[i] = fmt.Sprintf("r%03d", i)
	}
	b := batchOf(log, ids...)
	sub := &fakeSub{ds: []broker.Delivery{b}, log: log}
	br := &fakeBroker{subscribe: func() (broker.Subscription, error) { return sub, nil }}
	p := newTestPool(testBackend(`"`+srv.URL+`"`), br)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	wait.For(t, 10*time.Second, "the batch acknowledged", func() bool { return fmt.Sprint(log.all()) == "[ack r000]" })
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids {
		if got[id] != 1 {
			t.Fatalf("%s delivered %d times", id, got[id])
		}
	}
	succeeded := 0
	for _, e := range br.events(t) {
		if e.Status == job.Succeeded {
			succeeded++
		}
	}
	if succeeded != len(ids) {
		t.Fatalf("%d succeeded events, want %d", succeeded, len(ids))
	}
}

// Fetch never returns more than max, whatever mix of batches and single
// messages the broker handed out; single messages kept past max go back to
// the broker on Close.
func TestUnpackMixedNeverPastMax(t *testing.T) {
	log := &actionLog{}
	b := batchOf(log, "a", "b", "c")
	single := &fakeDelivery{msg: wire.EncodeRequest(request("z")), log: log}
	u := newUnpacking(&fakeSub{ds: []broker.Delivery{b, single}, log: log}, &fakeBroker{}, "requests.x", nil, zerolog.Nop(), within)
	var got []string
	for range 2 {
		ds, err := u.Fetch(context.Background(), 2)
		if err != nil || len(ds) > 2 {
			t.Fatalf("fetch of 2: %v, %v", keys(ds), err)
		}
		got = append(got, keys(ds)...)
	}
	if fmt.Sprint(got) != "[a b c z]" {
		t.Fatalf("handed out %v", got)
	}
	single2 := &fakeDelivery{msg: wire.EncodeRequest(request("y")), log: log}
	u = newUnpacking(&fakeSub{ds: []broker.Delivery{batchOf(log, "p", "q"), single2}, log: log}, &fakeBroker{}, "requests.x", nil, zerolog.Nop(), within)
	if ds, _ := u.Fetch(context.Background(), 2); fmt.Sprint(keys(ds)) != "[p q]" {
		t.Fatalf("handed out %v", keys(ds))
	}
	_ = u.Close()
	if single2.nacks != 1 {
		t.Fatalf("a single message kept in the buffer was not handed back at Close (nacks %d)", single2.nacks)
	}
}

// With a rate, a subscription holds about a second's worth of messages
// ahead (each may pack 64 requests), never fewer than 2.
func TestPrefetch(t *testing.T) {
	for _, c := range []struct {
		rate        float64
		concurrency int
		want        int
	}{{0, 16, 16}, {0, 2, 8}, {0, 1000, 256}, {0.5, 16, 2}, {5, 16, 5}, {100, 16, 16}, {2.5, 64, 3}} {
		b := testBackend(`"http://127.0.0.1:1"`)
		b.Rate, b.Concurrency = c.rate, c.concurrency
		if got := NewPool(b, &fakeBroker{}, zerolog.Nop(), time.Second).prefetch(); got != c.want {
			t.Errorf("rate %v concurrency %d: prefetch %d, want %d", c.rate, c.concurrency, got, c.want)
		}
	}
}

// firstTime is a delivery the broker knows it never handed out before.
type firstTime struct {
	fakeDelivery
	again bool
}

func (d *firstTime) Redelivered() bool { return d.again }

// A batch handed out for the first time is not looked up in the store; one
// handed out again is.
func TestUnpackAsksOnlyForRedeliveries(t *testing.T) {
	for _, again := range []bool{false, true} {
		log := &actionLog{}
		b := &firstTime{fakeDelivery: *batchOf(log, "a", "b"), again: again}
		asked := 0
		settled := func(_ context.Context, ids []string) ([]bool, error) { asked++; return make([]bool, len(ids)), nil }
		u := newUnpacking(&fakeSub{ds: []broker.Delivery{b}, log: log}, &fakeBroker{}, "requests.x", settled, zerolog.Nop(), within)
		if ds, _ := u.Fetch(context.Background(), 10); len(ds) != 2 {
			t.Fatalf("redelivered %v: delivered %v", again, keys(ds))
		}
		if (asked == 1) != again {
			t.Fatalf("redelivered %v: the store was asked %d times", again, asked)
		}
	}
}

// The unpacker tells how many requests each message it fetched carried,
// so a process with no ingress reports depths in requests.
func TestUnpackLearnsPacking(t *testing.T) {
	log := &actionLog{}
	single := &fakeDelivery{msg: wire.EncodeRequest(request("z")), log: log}
	u := newUnpacking(&fakeSub{ds: []broker.Delivery{batchOf(log, "a", "b", "c"), single}, log: log}, &fakeBroker{}, "requests.x", nil, zerolog.Nop(), within)
	var got []string
	u.packed = func(topic string, n int) { got = append(got, fmt.Sprintf("%s:%d", topic, n)) }
	if _, err := u.Fetch(context.Background(), 10); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "[requests.x:3 requests.x:1]" {
		t.Fatalf("learned %v", got)
	}
}
