package results

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/job"
)

// redisAddr is the Redis the tests use: REDIS_ADDR, else 127.0.0.1:6379
// (make test starts one there). It is a failure, not a skip, when absent.
func redisAddr() string {
	if a := os.Getenv("REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

func openRedis(t *testing.T, prefix string) *Redis {
	t.Helper()
	s := OpenRedis(RedisOptions{Addr: redisAddr(), KeyPrefix: prefix, TTL: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("no Redis at %s (make test starts one): %v", redisAddr(), err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestRedisStore(t *testing.T) {
	prefix := fmt.Sprintf("sluice-test-%d:", time.Now().UnixNano())
	a := openRedis(t, prefix) // two processes sharing one Redis
	b := openRedis(t, prefix)
	ctx := context.Background()

	if err := a.Accept(ctx, accepted("x", time.Now())); err != nil {
		t.Fatal(err)
	}
	if r, err := a.Get(ctx, "x"); err != nil || r.Status != job.Queued {
		t.Fatalf("accepted record not visible at once: %v %v", r, err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		if r, err := b.Get(ctx, "x"); err == nil && r.Status == job.Queued {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("accepted record never reached the other process")
		}
		time.Sleep(5 * time.Millisecond)
	}

	ch, stop := a.Watch("x") // a long poll in process a ...
	defer stop()
	// ... is woken by the collector in process b.
	if err := b.Apply(ctx, []*job.Event{ev("x", job.InFlight, 1, 0), ev("x", job.Succeeded, 1, 0)}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-time.After(2 * time.Second):
		t.Fatal("watcher in the other process not woken")
	}
	if r, err := a.Get(ctx, "x"); err != nil || r.Status != job.Succeeded || r.CompletedAt == nil {
		t.Fatalf("after apply: %+v %v", r, err)
	}
	// A late duplicate does not undo the outcome.
	if err := a.Apply(ctx, []*job.Event{ev("x", job.InFlight, 1, 0)}); err != nil {
		t.Fatal(err)
	}
	if r, _ := b.Get(ctx, "x"); r.Status != job.Succeeded {
		t.Fatalf("stale event applied: %s", r.Status)
	}
	if _, err := a.Get(ctx, "nope"); err != ErrNotFound {
		t.Fatalf("unknown id: %v", err)
	}
	if ttl := a.rdb.TTL(ctx, a.recKey("x")).Val(); ttl <= 0 || ttl > time.Minute {
		t.Fatalf("record TTL %v, want within the store ttl", ttl)
	}

	id, created, err := a.Claim(ctx, "c", "k", "id1")
	if err != nil || !created || id != "id1" {
		t.Fatalf("claim: %s %v %v", id, created, err)
	}
	if id, created, _ = b.Claim(ctx, "c", "k", "id2"); created || id != "id1" {
		t.Fatalf("claim from the other process: %s %v", id, created)
	}
}

func TestRedisDown(t *testing.T) {
	s := OpenRedis(RedisOptions{Addr: "127.0.0.1:1", TTL: time.Minute})
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := s.Accept(ctx, accepted("y", time.Now())); err != nil || time.Since(start) > 10*time.Millisecond {
		t.Fatalf("accept with Redis down: %v after %v (submits must not wait on Redis)", err, time.Since(start))
	}
	if _, err := s.Get(ctx, "y"); err == nil || err == ErrNotFound {
		t.Fatalf("poll with Redis down: %v, want ErrUnavailable", err)
	}
	if err := s.Ping(ctx); err == nil {
		t.Fatal("ping with Redis down succeeded")
	}
}
