package bolt

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/results"
	"github.com/sluice-gw/sluice/results/storetest"
)

// openIdle opens a store without running it (tests that drive flush and
// Sweep themselves); t's cleanup closes it.
func openIdle(t *testing.T, opts Options) *Store {
	t.Helper()
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// openStore opens a store in dir and runs it until t ends.
func openStore(t *testing.T, dir string, ttl time.Duration) *Store {
	t.Helper()
	s := openIdle(t, Options{Dir: dir, TTL: ttl})
	storetest.Start(t, s)
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
	s := openIdle(t, Options{Dir: dir, TTL: time.Hour})
	stop := storetest.Start(t, s)
	if err := s.Accept(ctx, accepted("a", time.Now())); err != nil {
		t.Fatal(err)
	}
	r, err := s.Get(ctx, "a")
	if err != nil || r.Status != job.Queued {
		t.Fatalf("accepted record not visible at once: %v %v", r, err)
	}
	if err := stop(); err != nil { // flushes
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir, time.Hour)
	if r, err := s.Get(ctx, "a"); err != nil || r.Status != job.Queued {
		t.Fatalf("accepted record lost across reopen: %v %v", r, err)
	}
	if _, err := s.Get(ctx, "nope"); err != results.ErrNotFound {
		t.Fatalf("unknown id: %v", err)
	}
}

func TestApplyOrderAndWatch(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), time.Hour)
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

// diskRecords counts the records in the window files.
func diskRecords(t *testing.T, s *Store) int {
	t.Helper()
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := 0
	for _, w := range s.wins {
		_ = w.db.View(func(tx *bbolt.Tx) error { n += tx.Bucket(bucketRecords).Stats().KeyN; return nil })
	}
	return n
}

// windowFiles lists the window files in dir.
func windowFiles(t *testing.T, dir string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, windowPrefix+"*"))
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// TestExpiry: a record lives ttl past its last update, in the window of
// that expiry; one already expired is not written at all; a window whose
// end has passed is removed whole.
func TestExpiry(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openIdle(t, Options{Dir: dir, TTL: time.Minute, Window: 10 * time.Second})
	now := time.Now()
	s.now = func() time.Time { return now }
	old := job.NewIDAt(now.Add(-3 * time.Minute))
	// Accepted long ago, but updated recently: it lives ttl past its update.
	slow := job.NewIDAt(now.Add(-3 * time.Minute))
	fresh := job.NewIDAt(now)
	_ = s.Accept(ctx, accepted(old, now.Add(-3*time.Minute)))
	_ = s.Accept(ctx, accepted(slow, now.Add(-3*time.Minute)))
	_ = s.Accept(ctx, accepted(fresh, now))
	if err := s.flush(); err != nil {
		t.Fatal(err)
	}
	done := ev(slow, job.Succeeded, 1, 0)
	done.At = now.Add(-30 * time.Second)
	if err := s.Apply(ctx, []*job.Event{done}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, old); err != results.ErrNotFound {
		t.Fatalf("expired record still served: %v", err)
	}
	for _, id := range []string{slow, fresh} {
		if _, err := s.Get(ctx, id); err != nil {
			t.Fatalf("live record %s: %v", id, err)
		}
	}
	if n := diskRecords(t, s); n != 2 {
		t.Fatalf("%d records on disk, want 2 (the expired one never written)", n)
	}
	if n := len(windowFiles(t, dir)); n != 2 {
		t.Fatalf("%d window files for expiries 30 s apart in 10 s windows, want 2", n)
	}
	now = now.Add(45 * time.Second) // slow has expired, fresh not
	if _, err := s.Get(ctx, slow); err != results.ErrNotFound {
		t.Fatalf("expired record still served: %v", err)
	}
	if n, err := s.DropExpired(); n != 1 || err != nil {
		t.Fatalf("dropped %d windows (%v), want 1", n, err)
	}
	if n := len(windowFiles(t, dir)); n != 1 || diskRecords(t, s) != 1 {
		t.Fatalf("%d window files with %d records after the drop, want 1 with 1", n, diskRecords(t, s))
	}
	if _, err := s.Get(ctx, fresh); err != nil {
		t.Fatalf("live record after the drop: %v", err)
	}
	now = now.Add(time.Minute)
	if n, err := s.DropExpired(); n != 1 || err != nil {
		t.Fatalf("dropped %d windows (%v), want 1", n, err)
	}
	if n := len(windowFiles(t, dir)); n != 0 {
		t.Fatalf("%d window files once every record expired", n)
	}
}

// TestWindowsAcrossUpdates: a record updated across window ends moves to
// the later window and is found there; its copy in the earlier one goes;
// a reopened store finds every window again; a window that ended while
// the store was closed is removed at open.
func TestWindowsAcrossUpdates(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := Options{Dir: dir, TTL: time.Minute, Window: time.Second,
		RouteTTL: map[string]time.Duration{"short": 5 * time.Second}}
	s := openIdle(t, opts)
	now := time.Now()
	s.now = func() time.Time { return now }
	ids := make([]string, 50)
	for i := range ids {
		ids[i] = job.NewIDAt(now)
		_ = s.Accept(ctx, accepted(ids[i], now))
	}
	short := job.NewIDAt(now)
	sr := accepted(short, now)
	sr.Route = "short"
	_ = s.Accept(ctx, sr)
	if err := s.flush(); err != nil {
		t.Fatal(err)
	}
	for step, st := range []job.Status{job.InFlight, job.Retrying, job.Succeeded} {
		now = now.Add(1500 * time.Millisecond) // past a window's end each time
		var evs []*job.Event
		for _, id := range ids {
			e := ev(id, st, 1, 0)
			e.At = now
			evs = append(evs, e)
		}
		if err := s.Apply(ctx, evs); err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			if r, err := s.Get(ctx, id); err != nil || r.Status != st {
				t.Fatalf("step %d: %s read as %+v %v, want %s", step, id, r, err, st)
			}
		}
		if n := diskRecords(t, s); n != len(ids)+1 {
			t.Fatalf("step %d: %d records on disk, want %d: a moved record left a copy", step, n, len(ids)+1)
		}
	}
	now = now.Add(3 * time.Second) // the short route's record has expired: its window ends
	if _, err := s.Get(ctx, short); err != results.ErrNotFound {
		t.Fatalf("record of a route with ttl 5s, 7.5 s on: %v", err)
	}
	if n, err := s.DropExpired(); n < 1 || err != nil {
		t.Fatalf("dropped %d windows (%v)", n, err)
	}
	if n := diskRecords(t, s); n != len(ids) {
		t.Fatalf("%d records on disk after the short route's window went, want %d", n, len(ids))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openIdle(t, opts)
	s.now = func() time.Time { return now }
	for _, id := range ids {
		if r, err := s.Get(ctx, id); err != nil || r.Status != job.Succeeded {
			t.Fatalf("after reopening: %s read as %+v %v", id, r, err)
		}
	}
	_ = s.Close()
	// A window that ended while the store was closed is removed at open.
	past, err := openDB(filepath.Join(dir, windowFile(time.Now().Add(-time.Second).Truncate(time.Millisecond))))
	if err != nil {
		t.Fatal(err)
	}
	_ = past.Close()
	before := len(windowFiles(t, dir))
	s = openIdle(t, opts)
	if after := len(windowFiles(t, dir)); after != before-1 || len(s.wins) != after {
		t.Fatalf("%d window files before open, %d after (%d open), want the ended one gone", before, after, len(s.wins))
	}
}

// putLegacy writes r into results.db as the JSON stores wrote before
// windows and the compact form existed.
func putLegacy(t *testing.T, s *Store, rs ...*job.Record) {
	t.Helper()
	err := s.db.Update(func(tx *bbolt.Tx) error {
		for _, r := range rs {
			v, _ := json.Marshal(struct {
				Merge *[3]int `json:"merge,omitempty"`
				*job.Record
				Client string `json:"client,omitempty"`
				Gen    int    `json:"gen,omitempty"`
			}{&[3]int{r.Gen, r.Attempts, r.Status.Rank()}, r, r.Client, r.Gen})
			if err := tx.Bucket(bucketRecords).Put(recordKey(r.ID), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.legacy.Store(true)
}

// TestLegacyRecords: records results.db holds from before windows are
// read, updated (the update goes to a window, the old copy away) and
// swept when they expire.
func TestLegacyRecords(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openIdle(t, Options{Dir: dir, TTL: time.Minute})
	now := time.Now()
	s.now = func() time.Time { return now }
	a, b, gone := job.NewIDAt(now), job.NewIDAt(now), job.NewIDAt(now.Add(-5*time.Minute))
	putLegacy(t, s, accepted(a, now), accepted(b, now), accepted(gone, now.Add(-5*time.Minute)))
	_ = s.Close()
	s = openIdle(t, Options{Dir: dir, TTL: time.Minute})
	s.now = func() time.Time { return now }
	if !s.legacy.Load() {
		t.Fatal("legacy records not noticed at open")
	}
	if r, err := s.Get(ctx, a); err != nil || r.Status != job.Queued {
		t.Fatalf("legacy record: %+v %v", r, err)
	}
	if _, err := s.Get(ctx, gone); err != results.ErrNotFound {
		t.Fatalf("expired legacy record: %v", err)
	}
	e := ev(a, job.Succeeded, 1, 0)
	e.At = now
	if err := s.Apply(ctx, []*job.Event{e}); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Get(ctx, a); err != nil || r.Status != job.Succeeded {
		t.Fatalf("updated legacy record: %+v %v", r, err)
	}
	if n := diskRecords(t, s); n != 1 {
		t.Fatalf("%d records in windows, want 1", n)
	}
	s.Sweep(ctx)
	var left int
	_ = s.db.View(func(tx *bbolt.Tx) error { left = tx.Bucket(bucketRecords).Stats().KeyN; return nil })
	if left != 1 {
		t.Fatalf("%d legacy records left, want 1 (b)", left)
	}
	now = now.Add(2 * time.Minute)
	s.Sweep(ctx)
	if s.legacy.Load() {
		t.Fatal("legacy records still looked for once all are gone")
	}
}

// TestLegacyClaim reads a binding written before claims had states: it
// bound a queued request.
func TestLegacyClaim(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), time.Hour)
	err := s.db.Update(func(tx *bbolt.Tx) error {
		v, _ := json.Marshal(map[string]any{"id": "old", "expiry": time.Now().Add(time.Hour)})
		return tx.Bucket(bucketIdem).Put(claimKey("c", "k"), v)
	})
	if err != nil {
		t.Fatal(err)
	}
	if c, err := s.Claim(ctx, "c", "k", "new", time.Minute); err != nil || c != (results.Claim{ID: "old", State: results.ClaimQueued}) {
		t.Fatalf("legacy binding: %+v %v", c, err)
	}
}

// TestEmbeddedGetWhileFlushing writes the accepted record and drops it
// from memory between Get's look on disk and its look in memory — the
// window that made an immediate poll 404 now and then.
func TestEmbeddedGetWhileFlushing(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), time.Hour)
	var once sync.Once
	s.queue.AfterMiss = func() {
		once.Do(func() {
			if err := s.flush(); err != nil {
				t.Error(err)
			}
		})
	}
	_ = s.Accept(ctx, accepted("x", time.Now()))
	if r, err := s.Get(ctx, "x"); err != nil || r.Status != job.Queued {
		t.Fatalf("poll while its record is being written: %v %v", r, err)
	}
}

// TestEmbeddedStoresUnescaped: a body full of "<" is stored one byte per "<".
func TestEmbeddedStoresUnescaped(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), time.Hour)
	body := strings.Repeat("<>&", 10000)
	e := ev("x", job.Succeeded, 1, 0)
	e.Response = &job.Response{Status: 200, Headers: map[string]string{}, Body: body, BodyEncoding: "utf8"}
	if err := s.Apply(ctx, []*job.Event{e}); err != nil {
		t.Fatal(err)
	}
	var raw []byte
	for _, w := range s.wins {
		_ = w.db.View(func(tx *bbolt.Tx) error {
			raw = bytes.Clone(tx.Bucket(bucketRecords).Get(recordKey("x")))
			return nil
		})
	}
	if len(raw) > len(body)+1000 || bytes.Contains(raw, []byte(`\u003c`)) {
		t.Fatalf("record stored in %d bytes for a %d-byte body (HTML-escaped)", len(raw), len(body))
	}
}

// TestEmbeddedAdmit: past the bound of waiting accepted records Admit
// refuses, and Accept still takes what was admitted.
func TestEmbeddedAdmit(t *testing.T) {
	ctx := context.Background()
	s := openIdle(t, Options{Dir: t.TempDir(), TTL: time.Hour, MaxPending: 3})
	s.queue.Put(accepted("a", time.Now()))
	s.queue.Put(accepted("b", time.Now()))
	s.queue.Put(accepted("c", time.Now()))
	if err := s.Admit(); !errors.Is(err, results.ErrUnavailable) {
		t.Fatalf("admit with 3 of 3 waiting: %v", err)
	}
	if err := s.Accept(ctx, accepted("d", time.Now())); err != nil {
		t.Fatal(err)
	}
	if err := s.flush(); err != nil {
		t.Fatal(err)
	}
	if err := s.Admit(); err != nil {
		t.Fatalf("admit after the flush: %v", err)
	}
}

// TestSweepInChunks: a sweep of many expired records (in results.db, from
// before windows) holds the write lock
// one chunk at a time, so an Apply (and a flush of accepted records) gets
// through in the middle of it instead of after it.
func TestSweepInChunks(t *testing.T) {
	ctx := context.Background()
	s := openIdle(t, Options{Dir: t.TempDir(), TTL: time.Minute})
	now := time.Now()
	s.now = func() time.Time { return now }
	const expired = 2*sweepChunk + 500
	old := now.Add(-3 * time.Minute)
	var legacy []*job.Record
	for i := range expired { // distinct acceptance millis make distinct ids
		at := old.Add(time.Duration(i) * time.Millisecond)
		legacy = append(legacy, accepted(job.NewIDAt(at), at))
	}
	putLegacy(t, s, legacy...)
	live := job.NewIDAt(now)
	_ = s.Accept(ctx, accepted(live, now))

	var chunks []int
	deleted := 0
	applied := make(chan error, 1)
	s.afterSweepTx = func(examined, gone int) {
		chunks = append(chunks, examined)
		deleted += gone
		if len(chunks) != 1 {
			return
		}
		// Mid-sweep: an Apply and a flush must not wait for the rest of it.
		go func() {
			if err := s.flush(); err != nil {
				applied <- err
				return
			}
			applied <- s.Apply(ctx, []*job.Event{{ID: live, Route: "r", Backend: "b",
				Status: job.InFlight, Attempts: 1, At: now}})
		}()
		select {
		case err := <-applied:
			if err != nil {
				t.Errorf("apply during the sweep: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("apply waited for the sweep")
		}
	}
	s.Sweep(ctx)
	if len(chunks) < 3 {
		t.Fatalf("sweep of %d records in %d transactions", expired, len(chunks))
	}
	for _, n := range chunks {
		if n > sweepChunk {
			t.Fatalf("a sweep transaction looked at %d keys, more than %d", n, sweepChunk)
		}
	}
	if deleted != expired {
		t.Fatalf("swept %d records, want %d", deleted, expired)
	}
	if r, err := s.Get(ctx, live); err != nil || r.Status != job.InFlight {
		t.Fatalf("live record after the sweep: %+v %v", r, err)
	}
}

// TestSweepClaims: expired idempotency keys go, in chunks too; live ones
// stay.
func TestSweepClaims(t *testing.T) {
	ctx := context.Background()
	s := openIdle(t, Options{Dir: t.TempDir(), TTL: time.Minute})
	now := time.Now()
	s.now = func() time.Time { return now }
	const n = sweepChunk + 10
	err := s.db.Update(func(tx *bbolt.Tx) error {
		for i := range n {
			v, _ := json.Marshal(storedClaim{ID: fmt.Sprint(i), State: claimQueued, Expiry: now.Add(s.opts.TTL)})
			if err := tx.Bucket(bucketIdem).Put(claimKey("c", fmt.Sprint(i)), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Minute)
	if _, err := s.Claim(ctx, "c", "live", "live", time.Second); err != nil {
		t.Fatal(err)
	}
	txs := 0
	s.afterSweepTx = func(int, int) { txs++ }
	s.Sweep(ctx)
	var keys int
	_ = s.db.View(func(tx *bbolt.Tx) error { keys = tx.Bucket(bucketIdem).Stats().KeyN; return nil })
	if keys != 1 || txs < 2 { // claims: two chunks (no legacy records: no look at them)
		t.Fatalf("%d claims left after %d sweep transactions, want 1 after at least 2", keys, txs)
	}
}

// TestOptionDefaults: zero options take the documented defaults; a
// missing dir or a negative option is refused.
func TestOptionDefaults(t *testing.T) {
	s := openIdle(t, Options{Dir: t.TempDir()})
	want := Options{Dir: s.opts.Dir, TTL: results.DefaultTTL, MaxPending: results.DefaultMaxPending,
		FlushInterval: 50 * time.Millisecond, SweepInterval: time.Minute, Window: time.Hour}
	if !reflect.DeepEqual(s.opts, want) {
		t.Errorf("defaults %+v, want %+v", s.opts, want)
	}
	for _, o := range []Options{{}, {Dir: t.TempDir(), TTL: -time.Second}, {Dir: t.TempDir(), MaxPending: -1},
		{Dir: t.TempDir(), RouteTTL: map[string]time.Duration{"r": 0}}} {
		if s, err := Open(o); err == nil {
			s.Close()
			t.Errorf("Open(%+v) took it", o)
		}
	}
}
