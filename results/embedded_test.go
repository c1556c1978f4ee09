package results

import (
	"context"
	"encoding/base64"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/job"
	bolt "go.etcd.io/bbolt"
)

func openStore(t *testing.T, dir string, ttl time.Duration) *Embedded {
	t.Helper()
	s, err := OpenEmbedded(dir, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func accepted(id string, at time.Time) *job.Record {
	return &job.Record{ID: id, Route: "r", Backend: "b", Status: job.Queued, AcceptedAt: at, UpdatedAt: at}
}

func ev(id string, st job.Status, attempts, gen int) *job.Event {
	return &job.Event{ID: id, Route: "r", Backend: "b", Status: st, Attempts: attempts, Gen: gen, At: time.Now()}
}

func TestAcceptVisibleAndDurable(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s := openStore(t, dir, time.Hour)
	if err := s.Accept(ctx, accepted("a", time.Now())); err != nil {
		t.Fatal(err)
	}
	r, err := s.Get(ctx, "a")
	if err != nil || r.Status != job.Queued {
		t.Fatalf("accepted record not visible at once: %v %v", r, err)
	}
	if err := s.Close(); err != nil { // flushes
		t.Fatal(err)
	}
	s = openStore(t, dir, time.Hour)
	defer s.Close()
	if r, err := s.Get(ctx, "a"); err != nil || r.Status != job.Queued {
		t.Fatalf("accepted record lost across reopen: %v %v", r, err)
	}
	if _, err := s.Get(ctx, "nope"); err != ErrNotFound {
		t.Fatalf("unknown id: %v", err)
	}
}

func TestApplyOrderAndWatch(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), time.Hour)
	defer s.Close()
	_ = s.Accept(ctx, accepted("a", time.Now()))
	ch, stop := s.Watch("a")
	defer stop()
	if err := s.Apply(ctx, []*job.Event{ev("a", job.InFlight, 1, 0)}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-time.After(time.Second):
		t.Fatal("watcher not woken")
	}
	steps := []struct {
		name string
		e    *job.Event
		want job.Status
		att  int
	}{
		{"retrying", ev("a", job.Retrying, 1, 0), job.Retrying, 1},
		{"stale in_flight ignored", ev("a", job.InFlight, 1, 0), job.Retrying, 1},
		{"next attempt", ev("a", job.InFlight, 2, 0), job.InFlight, 2},
		{"success", ev("a", job.Succeeded, 2, 0), job.Succeeded, 2},
		{"duplicate later attempt after terminal ignored", ev("a", job.Failed, 3, 0), job.Succeeded, 2},
		{"replay starts a new generation", ev("a", job.Queued, 0, 1), job.Queued, 0},
	}
	for _, st := range steps {
		if err := s.Apply(ctx, []*job.Event{st.e}); err != nil {
			t.Fatal(err)
		}
		r, err := s.Get(ctx, "a")
		if err != nil {
			t.Fatal(err)
		}
		if r.Status != st.want || r.Attempts != st.att {
			t.Fatalf("%s: got %s/%d, want %s/%d", st.name, r.Status, r.Attempts, st.want, st.att)
		}
	}
}

// ingressID builds an id the way ingress does: acceptance millis + random.
func ingressID(at time.Time, n byte) string {
	var b [18]byte
	ms := uint64(at.UnixMilli())
	for i := 5; i >= 0; i-- {
		b[i] = byte(ms)
		ms >>= 8
	}
	b[17] = n
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func TestExpiry(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), time.Minute)
	defer s.Close()
	now := time.Now()
	s.now = func() time.Time { return now }
	old := ingressID(now.Add(-3*time.Minute), 1)
	// Accepted long ago, but updated recently: it lives ttl past its update.
	slow := ingressID(now.Add(-3*time.Minute), 2)
	fresh := ingressID(now, 3)
	_ = s.Accept(ctx, accepted(old, now.Add(-3*time.Minute)))
	_ = s.Accept(ctx, accepted(slow, now.Add(-3*time.Minute)))
	_ = s.Accept(ctx, accepted(fresh, now))
	s.flush()
	done := ev(slow, job.Succeeded, 1, 0)
	done.At = now.Add(-10 * time.Second)
	if err := s.Apply(ctx, []*job.Event{done}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, old); err != ErrNotFound {
		t.Fatalf("expired record still served: %v", err)
	}
	s.Sweep()
	for _, id := range []string{slow, fresh} {
		if _, err := s.Get(ctx, id); err != nil {
			t.Fatalf("live record %s: %v", id, err)
		}
	}
	var n int
	_ = s.db.View(func(tx *bolt.Tx) error { n = tx.Bucket(bucketRecords).Stats().KeyN; return nil })
	if n != 2 {
		t.Fatalf("%d records on disk after sweep, want 2", n)
	}
	now = now.Add(2 * time.Minute) // now slow has expired too
	s.Sweep()
	_ = s.db.View(func(tx *bolt.Tx) error { n = tx.Bucket(bucketRecords).Stats().KeyN; return nil })
	if n != 0 {
		t.Fatalf("%d records on disk after the second sweep, want 0", n)
	}
}

func TestClaim(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), time.Hour)
	defer s.Close()
	id, created, err := s.Claim(ctx, "c", "k", "id1")
	if err != nil || !created || id != "id1" {
		t.Fatalf("first claim: %s %v %v", id, created, err)
	}
	id, created, _ = s.Claim(ctx, "c", "k", "id2")
	if created || id != "id1" {
		t.Fatalf("second claim: %s %v, want id1 false", id, created)
	}
	if id, created, _ = s.Claim(ctx, "other", "k", "id3"); !created || id != "id3" {
		t.Fatalf("keys are per client: %s %v", id, created)
	}
	_ = s.Unclaim(ctx, "c", "k")
	if id, created, _ = s.Claim(ctx, "c", "k", "id4"); !created || id != "id4" {
		t.Fatalf("after unclaim: %s %v", id, created)
	}
}
