package gateway

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/results"
	"github.com/sluice-gw/sluice/results/bolt"
	redisstore "github.com/sluice-gw/sluice/results/redis"
	"github.com/sluice-gw/sluice/results/storetest"
)

// A batch handed out again skips what the store holds an outcome or a
// queued retry of, and delivers what is under way, queued or unknown: on
// bbolt (a read per id) and on Redis (one MGET).
func TestSettledIn(t *testing.T) {
	t.Run("bolt", func(t *testing.T) {
		store, err := bolt.Open(bolt.Options{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		storetest.Running(t, store)
		checkSettled(t, store)
	})
	t.Run("redis", func(t *testing.T) {
		if testing.Short() {
			t.Skip("needs Redis; skipped with -short")
		}
		addr := os.Getenv("REDIS_ADDR")
		if addr == "" {
			addr = "127.0.0.1:6379"
		}
		store, err := redisstore.Open(redisstore.Options{Addr: addr, TTL: time.Minute,
			KeyPrefix: fmt.Sprintf("sluice-test-settled-%d:", time.Now().UnixNano())})
		if err != nil {
			t.Fatal(err)
		}
		storetest.Running(t, store)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if err := store.Ping(ctx); err != nil {
			t.Fatalf("no Redis at %s (make test starts one): %v", addr, err)
		}
		checkSettled(t, store)
	})
}

func checkSettled(t *testing.T, store results.Store) {
	ctx := context.Background()
	now := time.Now().UTC()
	statuses := map[string]job.Status{"ok": job.Succeeded, "bad": job.Failed, "again": job.Retrying, "now": job.InFlight, "new": job.Queued}
	for id, st := range statuses {
		rec := &job.Record{ID: id, Route: "r", Backend: "b", Status: job.Queued, AcceptedAt: now, UpdatedAt: now}
		if err := store.Accept(ctx, rec); err != nil {
			t.Fatal(err)
		}
		if st == job.Queued {
			continue
		}
		ev := job.EventFor(&job.Request{ID: id, Route: "r", Backend: "b", AcceptedAt: now}, st, 1)
		if err := store.Apply(ctx, []*job.Event{ev}); err != nil {
			t.Fatal(err)
		}
	}
	ids := []string{"ok", "bad", "again", "now", "new", "unknown"}
	got, err := settledIn(store)(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	want := []bool{true, true, true, false, false, false}
	for i := range ids {
		if got[i] != want[i] {
			t.Errorf("%s (%s): settled %v, want %v", ids[i], statuses[ids[i]], got[i], want[i])
		}
	}
}
