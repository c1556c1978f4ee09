package results

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/internal/stacks"
	"github.com/sluice-gw/sluice/job"
)

// storeGoroutines returns the stacks of goroutines a store (or its Redis
// client) runs.
func storeGoroutines() []string {
	return stacks.Matching(func(g string) bool {
		for _, mark := range []string{"results.(*Redis)", "results.(*Embedded)", "results.every",
			"results.OpenRedis", "results.OpenEmbedded", "go-redis"} {
			if strings.Contains(g, mark) {
				return true
			}
		}
		return false
	})
}

// TestGoroutinesEndAtClose: every goroutine a store starts — flush loops,
// sweeper, the Redis listener and its subscription — is gone when Close
// returns (give or take the scheduler), with Redis up or down, and a
// second Close is harmless.
func TestGoroutinesEndAtClose(t *testing.T) {
	ctx := context.Background()
	emb := openStore(t, t.TempDir(), time.Hour)
	prefix := testPrefix(t)
	up1 := OpenRedis(RedisOptions{Addr: redisAddr(), KeyPrefix: prefix, TTL: time.Minute})
	up2 := OpenRedis(RedisOptions{Addr: redisAddr(), KeyPrefix: prefix, TTL: time.Minute})
	down := OpenRedis(RedisOptions{Addr: "127.0.0.1:1", TTL: time.Minute, CloseTimeout: 200 * time.Millisecond})
	for i, s := range []Store{emb, up1, up2, down} {
		id := string(rune('a' + i))
		_ = s.Accept(ctx, accepted(id, time.Now()))
		ch, stop := s.Watch(id)
		_ = s.Apply(ctx, []*job.Event{ev(id, job.InFlight, 1, 0)})
		if s != down {
			select {
			case <-ch:
			case <-time.After(5 * time.Second):
				t.Fatalf("%T: watch not woken", s)
			}
		}
		stop()
	}
	if len(storeGoroutines()) == 0 {
		t.Fatal("no store goroutines found while the stores run: the stack marks are stale")
	}
	for _, s := range []Store{emb, up1, up2, down} {
		_ = s.Close()
		_ = s.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := storeGoroutines()
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines outlive Close:\n\n%s", len(left), strings.Join(left, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
