package redis_test

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/sluice-gw/sluice/results"
	"github.com/sluice-gw/sluice/results/redis"
	"github.com/sluice-gw/sluice/results/storetest"
)

var prefixes atomic.Int64

func TestConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Redis; skipped with -short")
	}
	addr := os.Getenv("REDIS_ADDR")
	if addr == "" {
		addr = "127.0.0.1:6379"
	}
	storetest.Run(t, func(t *testing.T, ttl time.Duration) (a, b results.Store) {
		prefix := fmt.Sprintf("sluice-test-%d-%d:", time.Now().UnixNano(), prefixes.Add(1))
		t.Cleanup(func() { deleteKeys(t, addr, prefix) }) // after both handles closed
		open := func() results.Store {
			s, err := redis.Open(redis.Options{Addr: addr, KeyPrefix: prefix, TTL: ttl})
			if err != nil {
				t.Fatal(err)
			}
			storetest.Running(t, s)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if err := s.Ping(ctx); err != nil {
				t.Fatalf("no Redis at %s (make test starts one): %v", addr, err)
			}
			return s
		}
		return open(), open() // two processes sharing one Redis
	})
}

// deleteKeys removes every key a test wrote under prefix.
func deleteKeys(t *testing.T, addr, prefix string) {
	rdb := goredis.NewClient(&goredis.Options{Addr: addr})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
		if len(keys) == 1000 {
			rdb.Del(ctx, keys...)
			keys = keys[:0]
		}
	}
	if len(keys) > 0 {
		rdb.Del(ctx, keys...)
	}
	if err := iter.Err(); err != nil {
		t.Errorf("cleaning up %s*: %v", prefix, err)
	}
}
