package redis

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/internal/stacks"
	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/results"
	"github.com/sluice-gw/sluice/results/storetest"
)

// storeGoroutines returns the stacks of goroutines a store runs, and
// with client also those of its Redis client (which go-redis starts when
// the client is made, in Open).
func storeGoroutines(client bool) []string {
	marks := []string{"results/redis.(*Store)", "results/redis.Open"}
	if client {
		marks = append(marks, "go-redis")
	}
	return stacks.Matching(func(g string) bool {
		for _, mark := range marks {
			if strings.Contains(g, mark) {
				return true
			}
		}
		return false
	})
}

// waitNoStoreGoroutines fails t unless the store goroutines are gone
// within 5s (give or take the scheduler).
func waitNoStoreGoroutines(t *testing.T, client bool, when string) {
	t.Helper()
	if left := stacks.Left(5*time.Second, func() []string { return storeGoroutines(client) }); len(left) > 0 {
		t.Fatalf("%d goroutines %s:\n\n%s", len(left), when, strings.Join(left, "\n\n"))
	}
}

// TestGoroutinesEndWithRun: Open starts no goroutine of the store's (the
// Redis client's own aside); every goroutine Run starts — the flush loop,
// the listener — is gone when Run returns, with Redis up or down; the
// client's are gone when Close returns, and a second Close is harmless.
func TestGoroutinesEndWithRun(t *testing.T) {
	ctx := context.Background()
	prefix := testPrefix(t)
	up1 := open(t, Options{Addr: redisAddr(t), KeyPrefix: prefix, TTL: time.Minute})
	up2 := open(t, Options{Addr: redisAddr(t), KeyPrefix: prefix, TTL: time.Minute})
	down := open(t, Options{Addr: "127.0.0.1:1", TTL: time.Minute, StopTimeout: 200 * time.Millisecond})
	waitNoStoreGoroutines(t, false, "run after Open, before Run")
	var stops []func() error
	for i, s := range []*Store{up1, up2, down} {
		stops = append(stops, storetest.Start(t, s))
		id := string(rune('a' + i))
		_ = s.Accept(ctx, accepted(id, time.Now()))
		ch, stop := s.Watch(id)
		_ = s.Apply(ctx, []*job.Event{ev(id, job.InFlight, 1, 0)})
		if s != down {
			select {
			case <-ch:
			case <-time.After(5 * time.Second):
				t.Fatalf("store %d: watch not woken", i)
			}
		}
		stop()
	}
	if len(storeGoroutines(false)) == 0 {
		t.Fatal("no store goroutines found while the stores run: the stack marks are stale")
	}
	for _, stop := range stops {
		_ = stop()
	}
	waitNoStoreGoroutines(t, false, "outlive Run")
	for _, s := range []results.Store{up1, up2, down} {
		_ = s.Close()
		_ = s.Close()
	}
	waitNoStoreGoroutines(t, true, "outlive Close")
}
