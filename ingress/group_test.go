package ingress

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/internal/wait"
	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/wire"
)

// writes records what a grouper wrote, and can hold writes until released.
type writes struct {
	mu      sync.Mutex
	msgs    []broker.Message
	hold    chan struct{} // when set, each write waits for it to close
	refuse  func(broker.Message) error
	started int
}

func (w *writes) Publish(ctx context.Context, _ string, m broker.Message) error {
	w.mu.Lock()
	w.started++
	hold := w.hold
	w.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", broker.ErrUnavailable, ctx.Err())
		}
	}
	if w.refuse != nil {
		if err := w.refuse(m); err != nil {
			return err
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, m)
	return nil
}

func (w *writes) written() []broker.Message {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]broker.Message(nil), w.msgs...)
}

func groupOpts() GroupOptions {
	return GroupOptions{MaxRequests: 64, MaxBytes: 1 << 20, Writes: 1, Timeout: 5 * time.Second}
}

func msgN(i int) broker.Message {
	id := "id-" + strconv.Itoa(i)
	return broker.Message{Key: id, Headers: map[string]string{wire.HID: id}, Body: []byte(`{"i":` + strconv.Itoa(i) + `}`)}
}

// publishAll publishes n messages at once and returns their errors.
func publishAll(g *grouper, from, n int) <-chan error {
	errs := make(chan error, n)
	for i := from; i < from+n; i++ {
		go func() { errs <- g.Publish(context.Background(), "t", msgN(i)) }()
	}
	return errs
}

// unpackAll returns the ids written, in order, and how many writes.
func unpackAll(t *testing.T, ms []broker.Message) []string {
	t.Helper()
	var ids []string
	for _, m := range ms {
		parts, err := wire.Unpack(m)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range parts {
			ids = append(ids, p.Key)
		}
	}
	return ids
}

// An idle grouper writes at once, and a request alone is an ordinary
// message.
func TestGroupIdleWritesAtOnce(t *testing.T) {
	w := &writes{}
	g := newGrouper(w, groupOpts())
	start := time.Now()
	if err := g.Publish(context.Background(), "t", msgN(1)); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 50*time.Millisecond {
		t.Fatalf("an idle publish took %v", el)
	}
	got := w.written()
	if len(got) != 1 || wire.IsBatch(got[0]) || got[0].Key != "id-1" {
		t.Fatalf("wrote %+v, want the message itself", got)
	}
}

// Requests arriving during a write share the next one, and each caller
// returns once the write holding its request is confirmed.
func TestGroupPacksWhatArrivesDuringAWrite(t *testing.T) {
	w := &writes{hold: make(chan struct{})}
	packed := map[int]int{}
	var mu sync.Mutex
	opts := groupOpts()
	opts.Packed = func(_ string, n int) { mu.Lock(); packed[n]++; mu.Unlock() }
	g := newGrouper(w, opts)
	first := publishAll(g, 0, 1)
	wait.For(t, 5*time.Second, "the first write to start", func() bool { w.mu.Lock(); defer w.mu.Unlock(); return w.started == 1 })
	rest := publishAll(g, 1, 100)
	wait.Never(t, 50*time.Millisecond, "a caller answered before its write", func() bool { return len(first)+len(rest) > 0 })
	close(w.hold)
	for range 1 {
		if err := <-first; err != nil {
			t.Fatal(err)
		}
	}
	for range 100 {
		if err := <-rest; err != nil {
			t.Fatal(err)
		}
	}
	ms := w.written()
	ids := unpackAll(t, ms)
	if len(ids) != 101 {
		t.Fatalf("%d requests written, want 101", len(ids))
	}
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			t.Fatalf("%s written twice", id)
		}
		seen[id] = true
	}
	// 1 alone, then 100 in writes of at most 64.
	if len(ms) != 3 {
		t.Fatalf("%d writes for 101 requests, want 3 (1, then 64 and 36)", len(ms))
	}
	for _, m := range ms[1:] {
		if parts, _ := wire.Unpack(m); len(parts) > 64 {
			t.Fatalf("a write of %d requests; max_requests is 64", len(parts))
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if packed[1] != 1 || packed[64]+packed[36] != 2 {
		t.Fatalf("Packed learned %v", packed)
	}
}

// max_requests 1 writes one message per request.
func TestGroupOffWritesEachAlone(t *testing.T) {
	w := &writes{}
	opts := groupOpts()
	opts.MaxRequests = 1
	g := newGrouper(w, opts)
	errs := publishAll(g, 0, 50)
	for range 50 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range w.written() {
		if wire.IsBatch(m) {
			t.Fatal("a packed message with group commit off")
		}
	}
}

// A group over MaxBytes is cut: what does not fit opens the next write;
// a request larger than MaxBytes goes alone.
func TestGroupBytes(t *testing.T) {
	w := &writes{hold: make(chan struct{})}
	opts := groupOpts()
	one := wire.PackedSize(msgN(10))
	opts.MaxBytes = wire.BatchOverhead + 3*one
	g := newGrouper(w, opts)
	first := publishAll(g, 0, 1)
	wait.For(t, 5*time.Second, "the first write to start", func() bool { w.mu.Lock(); defer w.mu.Unlock(); return w.started == 1 })
	rest := publishAll(g, 10, 9)
	big := msgN(99)
	big.Body = make([]byte, opts.MaxBytes)
	bigErr := make(chan error, 1)
	go func() { bigErr <- g.Publish(context.Background(), "t", big) }()
	time.Sleep(20 * time.Millisecond)
	close(w.hold)
	for range 9 {
		if err := <-rest; err != nil {
			t.Fatal(err)
		}
	}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-bigErr; err != nil {
		t.Fatal(err)
	}
	for _, m := range w.written() {
		if len(m.Body) > opts.MaxBytes && m.Key != "id-99" {
			t.Fatalf("a write of %d bytes; max_bytes is %d", len(m.Body), opts.MaxBytes)
		}
		if m.Key == "id-99" && wire.IsBatch(m) {
			t.Fatal("a request larger than max_bytes was packed")
		}
	}
	if ids := unpackAll(t, w.written()); len(ids) != 11 {
		t.Fatalf("%d requests written, want 11", len(ids))
	}
}

// A broker that refuses the packed message as too large gets each request
// alone, and each caller its own outcome.
func TestGroupTooLargeFallsBackToOneByOne(t *testing.T) {
	w := &writes{hold: make(chan struct{})}
	w.refuse = func(m broker.Message) error {
		if wire.IsBatch(m) || m.Key == "id-13" {
			return fmt.Errorf("%w: test", broker.ErrTooLarge)
		}
		return nil
	}
	g := newGrouper(w, groupOpts())
	first := publishAll(g, 0, 1)
	wait.For(t, 5*time.Second, "the first write to start", func() bool { w.mu.Lock(); defer w.mu.Unlock(); return w.started == 1 })
	errs := make([]chan error, 8)
	for i := range errs {
		errs[i] = make(chan error, 1)
		go func() { errs[i] <- g.Publish(context.Background(), "t", msgN(10+i)) }()
	}
	time.Sleep(20 * time.Millisecond)
	close(w.hold)
	<-first
	for i, c := range errs {
		err := <-c
		if (i == 3) != errors.Is(err, broker.ErrTooLarge) {
			t.Fatalf("request %d: %v", 10+i, err)
		}
	}
	if ids := unpackAll(t, w.written()); len(ids) != 8 { // the first, and 7 of 8
		t.Fatalf("%d written, want 8", len(ids))
	}
}

// A write that fails fails every request it held; one that times out says
// so, for ack: fast (it may have landed).
func TestGroupFailureReachesEveryCaller(t *testing.T) {
	w := &writes{hold: make(chan struct{})}
	opts := groupOpts()
	opts.Timeout = 100 * time.Millisecond
	g := newGrouper(w, opts)
	errs := publishAll(g, 0, 20)
	for range 20 {
		err := <-errs
		if !errors.Is(err, broker.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want unavailable after a timeout", err)
		}
	}
}

// ack: fast's writers pack what is buffered: one message per backend,
// within the group limits; group commit off writes one per request.
func TestAckFastPacks(t *testing.T) {
	f := newFastPublisher(&writes{}, GroupOptions{MaxRequests: 3, MaxBytes: 1 << 20}, nil, zerolog.Nop(), 10, time.Second)
	var reqs []*job.Request
	for i, be := range []string{"a", "b", "a", "a", "a", "b"} {
		reqs = append(reqs, &job.Request{ID: strconv.Itoa(i), Backend: be, Method: "POST"})
	}
	var got []string
	for _, g := range f.pack(reqs) {
		parts, err := wire.Unpack(g.msg)
		if err != nil || len(parts) != len(g.reqs) {
			t.Fatalf("group of %d packed as %d, %v", len(g.reqs), len(parts), err)
		}
		ids := ""
		for _, p := range parts {
			ids += p.Key
		}
		got = append(got, g.topic+":"+ids)
	}
	if fmt.Sprint(got) != "[requests.a:023 requests.b:15 requests.a:4]" {
		t.Fatalf("packed %v", got)
	}
	f.group.MaxRequests = 1
	if n := len(f.pack(reqs)); n != 6 {
		t.Fatalf("group commit off: %d messages for 6 requests", n)
	}
}

// Every write is bounded by Timeout, also one that goes alone (group commit
// off, or a request too large to pack), and a request waiting behind a
// slow write gets its outcome within Timeout of its arrival.
func TestGroupWritesAreBounded(t *testing.T) {
	for _, c := range []struct {
		name string
		opts func(*GroupOptions)
	}{
		{"grouped", func(*GroupOptions) {}},
		{"off", func(o *GroupOptions) { o.MaxRequests = 1 }},
		{"too large to pack", func(o *GroupOptions) { o.MaxBytes = 10 }},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := &writes{hold: make(chan struct{})} // never released
			opts := groupOpts()
			opts.Timeout = 100 * time.Millisecond
			c.opts(&opts)
			g := newGrouper(w, opts)
			start := time.Now()
			errs := publishAll(g, 0, 5)
			for range 5 {
				if err := <-errs; !errors.Is(err, broker.ErrUnavailable) {
					t.Fatalf("got %v", err)
				}
			}
			if el := time.Since(start); el > time.Second {
				t.Fatalf("answered after %v; the timeout is 100 ms", el)
			}
		})
	}
}
