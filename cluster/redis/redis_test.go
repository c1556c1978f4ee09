package redis

import (
	"context"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/sluice-gw/sluice/cluster"
	"github.com/sluice-gw/sluice/cluster/clustertest"
	"github.com/sluice-gw/sluice/internal/redistest"
)

func TestConformance(t *testing.T) {
	addr := redistest.Addr(t)
	clustertest.Run(t, func(t *testing.T) (cluster.Store, cluster.Store) {
		prefix := redistest.Prefix(t, addr)
		a, b := Open(Options{Addr: addr, KeyPrefix: prefix}), Open(Options{Addr: addr, KeyPrefix: prefix})
		t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
		return a, b
	})
}

// TestKeys: the tuning hash holds only what was set, under the documented
// key, with no expiry; figures expire by Redis's clock.
func TestKeys(t *testing.T) {
	addr := redistest.Addr(t)
	prefix := redistest.Prefix(t, addr)
	s := Open(Options{Addr: addr, KeyPrefix: prefix})
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rate := 2.5
	if _, err := s.Tune(ctx, "b", cluster.Tuning{Rate: &rate}); err != nil {
		t.Fatal(err)
	}
	rdb := goredis.NewClient(&goredis.Options{Addr: addr})
	defer rdb.Close()
	h, err := rdb.HGetAll(ctx, prefix+"tune:b").Result()
	if err != nil || len(h) != 3 || h["rate"] != "2.5" || h["version"] != "1" || h["updated_at"] == "" {
		t.Fatalf("tune hash %v %v", h, err)
	}
	if ttl := rdb.PTTL(ctx, prefix+"tune:b").Val(); ttl != -1 {
		t.Fatalf("tune hash expires in %v; it is kept until reset", ttl)
	}
	if err := s.Report(ctx, map[string]cluster.Figures{"b": {Worker: "w"}}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if ttl := rdb.PTTL(ctx, prefix+"worker:b:w").Val(); ttl <= 0 || ttl > 5*time.Second {
		t.Fatalf("figures key expires in %v, want within 5 s", ttl)
	}
	// A tuning written by hand with a bad value is an error, not a guess.
	rdb.HSet(ctx, prefix+"tune:c", "rate", "fast")
	if _, err := s.Tunings(ctx, []string{"b", "c"}); err == nil {
		t.Fatal("a bad rate read without an error")
	}
}
