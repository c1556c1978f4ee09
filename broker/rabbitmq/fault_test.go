package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/broker/brokertest"
	"github.com/sluice-gw/sluice/internal/rabbitctl"
)

func ctl(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if err := rabbitctl.Ctl(ctx, args...); err != nil {
		t.Fatal(err)
	}
}

func ensureRunning(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	if err := rabbitctl.EnsureRunning(ctx); err != nil {
		t.Error(err)
	}
}

// TestBrokerRestarts drives a stream of publishes and a consumer through
// `rabbitmqctl stop_app` / `start_app` and through a SIGKILL of the broker
// process and a restart: publishes fail while it is away (never confirmed
// falsely), the client reconnects by itself, and every confirmed message is
// consumed.
func TestBrokerRestarts(t *testing.T) {
	if testing.Short() || os.Getenv("RABBITMQ_URL") != "" {
		t.Skip("restarts the local RabbitMQ")
	}
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		t.Fatal("rabbitmqctl not found (make test installs RabbitMQ)")
	}
	t.Cleanup(func() { ensureRunning(t) })
	ctx := context.Background()
	prefix := fmt.Sprintf("sluice-fault-%d.", time.Now().UnixNano())
	b, err := Open(ctx, Options{URL: amqpURL(), QueuePrefix: prefix, Backends: []string{"a"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // after stop
		if err := DeleteQueues(b.opts); err != nil {
			t.Errorf("delete queues: %v", err)
		}
	})
	brokertest.Start(t, b)
	topic := broker.RequestTopic("a")

	var mu sync.Mutex
	confirmed := map[string]bool{}
	failed := 0
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the stream: bounded in count and time
		defer wg.Done()
		for i := 0; i < 100000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			key := fmt.Sprintf("m%06d", i)
			err := b.Publish(pctx, topic, broker.Message{Key: key, Body: []byte(key)})
			cancel()
			mu.Lock()
			if err == nil {
				confirmed[key] = true
			} else {
				if !errors.Is(err, broker.ErrUnavailable) {
					t.Errorf("publish error not marked unavailable: %v", err)
				}
				failed++
			}
			mu.Unlock()
			if err != nil {
				time.Sleep(50 * time.Millisecond)
			}
		}
	}()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(confirmed) }
	waitMore := func(n int, what string) {
		deadline := time.Now().Add(120 * time.Second)
		for count() < n {
			if time.Now().After(deadline) {
				t.Fatalf("publishing did not resume after %s (%d confirmed)", what, count())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitMore(200, "start")

	ctl(t, "stop_app")
	time.Sleep(2 * time.Second)
	ctl(t, "start_app")
	waitMore(count()+200, "stop_app/start_app")

	if err := rabbitctl.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	ensureRunning(t)
	waitMore(count()+200, "SIGKILL and restart")
	close(stop)
	wg.Wait()
	t.Logf("%d confirmed, %d refused while RabbitMQ was away", count(), failed)
	if failed == 0 {
		t.Fatal("no publish failed while RabbitMQ was away")
	}

	// Every confirmed message is there to consume (duplicates allowed).
	sub, err := b.Subscribe(ctx, topic, broker.SubscribeOptions{Prefetch: 256})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	got := map[string]bool{}
	// Until every confirmed key came: got also holds refused publishes that
	// landed anyway, so its size says nothing.
	missing := func() bool {
		mu.Lock()
		defer mu.Unlock()
		for k := range confirmed {
			if !got[k] {
				return true
			}
		}
		return false
	}
	deadline := time.Now().Add(120 * time.Second)
	for missing() {
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ds, err := sub.Fetch(fctx, 256)
		cancel()
		if err != nil && time.Now().After(deadline) {
			break
		}
		for _, d := range ds {
			got[d.Message().Key] = true
			_ = d.Ack(ctx)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	lost := 0
	for k := range confirmed {
		if !got[k] {
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d confirmed messages lost", lost, len(confirmed))
	}
}
