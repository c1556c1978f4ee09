// Package redistest is what the tests of sluice's Redis adapters share:
// the address of the test Redis and a key prefix of a test's own. It is
// imported by _test.go files only.
package redistest

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// Addr is the Redis the tests use: REDIS_ADDR, else 127.0.0.1:6379 (make
// test starts one there). Tests that need it skip under -short; it is a
// failure, not a skip, when absent otherwise.
func Addr(tb testing.TB) string {
	tb.Helper()
	if testing.Short() {
		tb.Skip("needs Redis; skipped with -short")
	}
	if a := os.Getenv("REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

var prefixes atomic.Int64

// Prefix returns a key prefix of tb's own on the Redis at addr. When tb
// ends, every key that holds the prefix is deleted, also where a library
// put something in front of it (redis_rate's "rate:"). Cleanups run last
// registered first, so call Prefix before opening the clients that use it.
func Prefix(tb testing.TB, addr string) string {
	prefix := fmt.Sprintf("sluice-test-%d-%d:", time.Now().UnixNano(), prefixes.Add(1))
	tb.Cleanup(func() {
		rdb := goredis.NewClient(&goredis.Options{Addr: addr})
		defer rdb.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		iter := rdb.Scan(ctx, 0, "*"+prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			rdb.Del(ctx, iter.Val())
		}
		if err := iter.Err(); err != nil {
			tb.Errorf("cleaning up *%s*: %v", prefix, err)
		}
	})
	return prefix
}
