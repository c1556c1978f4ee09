package redis

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/job"
)

// TestRedisBytesPerRecord: a succeeded request's record without a
// response, with the attempt log of its one attempt, takes at most 200
// bytes of Redis memory (MEMORY USAGE of its key; JSON records took about
// 420).
func TestRedisBytesPerRecord(t *testing.T) {
	s := openRedis(t, Options{KeyPrefix: testPrefix(t)})
	ctx := context.Background()
	const n = 2000
	var evs []*job.Event
	at := time.Now().UTC()
	for range n {
		id := job.NewIDAt(at)
		evs = append(evs, &job.Event{ID: id, Route: "logs", Backend: "logstore", Status: job.Succeeded,
			Attempts: 1, AcceptedAt: at, At: at.Add(5 * time.Millisecond),
			AttemptLog: job.AttemptLog{{Attempt: 1, At: at.Add(2 * time.Millisecond), Status: 200, DurationMS: 3}}})
	}
	before := usedMemory(t, s)
	if err := s.Apply(ctx, evs); err != nil {
		t.Fatal(err)
	}
	after := usedMemory(t, s)
	var total int64
	for _, e := range evs[:100] {
		n, err := s.rdb.MemoryUsage(ctx, s.recKey(e.ID)).Result()
		if err != nil {
			t.Fatal(err)
		}
		total += n
	}
	per := float64(total) / 100
	// used_memory also moves with other clients of the same Redis: logged only.
	t.Logf("MEMORY USAGE %.1f bytes per record; used_memory grew %.1f bytes per record", per, float64(after-before)/n)
	if per > 200 {
		t.Fatalf("%.1f bytes per record, want at most 200", per)
	}
}

func usedMemory(t *testing.T, s *Store) int64 {
	t.Helper()
	v, err := s.rdb.InfoMap(context.Background(), "memory").Result()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, kv := range v {
		if m, ok := kv["used_memory"]; ok {
			n, _ = strconv.ParseInt(m, 10, 64)
		}
	}
	return n
}
