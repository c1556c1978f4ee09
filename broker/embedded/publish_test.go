package embedded

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/internal/wait"
)

func openTest(t *testing.T) *Broker {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := Open(ctx, Options{Dir: t.TempDir(), Backends: []string{"a"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// TestPublishAnswers: each answer JetStream can give a publish reaches it —
// a confirm, no stream for the subject, the stream's refusal (decoded, so
// publishError classifies it) — and the window's slots come back.
func TestPublishAnswers(t *testing.T) {
	b := openTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := b.js.CreateStream(ctx, jetstream.StreamConfig{Name: "SMALL", Subjects: []string{"test.small"}, MaxMsgSize: 100}); err != nil {
		t.Fatal(err)
	}
	p, err := newPublisher(b.nc, 1) // one slot: a slot not given back blocks the next publish
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := p.publish(ctx, &nats.Msg{Subject: subject(broker.RequestTopic("a")), Data: []byte("x")}); err != nil {
			t.Fatalf("publish to a stream: %v", err)
		}
		err := p.publish(ctx, &nats.Msg{Subject: "test.nostream", Data: []byte("x")})
		if !errors.Is(err, jetstream.ErrNoStreamResponse) {
			t.Fatalf("publish to no stream: %v, want ErrNoStreamResponse", err)
		}
		err = p.publish(ctx, &nats.Msg{Subject: "test.small", Header: nats.Header{"k": {"v"}}, Data: make([]byte, 200)})
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamMessageExceedsMaximum {
			t.Fatalf("publish over the stream's size: %v, want its API error", err)
		}
		if !errors.Is(publishError("t", err), broker.ErrTooLarge) {
			t.Fatalf("publishError(%v) is not ErrTooLarge", err)
		}
	}
	if n := p.waiting(); n != 0 {
		t.Fatalf("%d publishes still wait", n)
	}
}

// TestPublishUnanswered: a publish nobody confirms ends with its ctx and
// leaves nothing behind; one failed by failAll (a lost connection, Close)
// returns that error.
func TestPublishUnanswered(t *testing.T) {
	b := openTest(t)
	sub, err := b.nc.SubscribeSync("test.silent") // a responder that never answers
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	p, err := newPublisher(b.nc, 1)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		err := p.publish(ctx, &nats.Msg{Subject: "test.silent", Data: []byte("x")})
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("unanswered publish: %v, want its deadline", err)
		}
		if n := p.waiting(); n != 0 {
			t.Fatalf("%d publishes still wait after their deadline", n)
		}
	}
	done := make(chan error, 1)
	go func() { done <- p.publish(context.Background(), &nats.Msg{Subject: "test.silent", Data: []byte("x")}) }()
	wait.For(t, 5*time.Second, "the publish waits", func() bool { return p.waiting() == 1 })
	p.failAll(broker.ErrUnavailable)
	if err := <-done; !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("failed publish: %v, want ErrUnavailable", err)
	}
}

// TestPublishCanceled: a publish whose ctx ended says the broker is
// unavailable, like any publish that did not land for sure.
func TestPublishCanceled(t *testing.T) {
	b := openTest(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := b.Publish(ctx, broker.RequestTopic("a"), broker.Message{Key: "k", Body: []byte("x")})
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("publish with an ended ctx: %v, want ErrUnavailable", err)
	}
}
