package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/internal/wait"
	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/results"
)

// Factory opens a new, empty store whose records live ttl, and returns two
// handles on it, as two processes sharing it would hold. A kind that allows
// one opener per store (a bbolt file) returns the same handle twice; the
// suite's concurrent cases then run as goroutines on that handle. The
// factory runs the handles (Running) and closes them at t's cleanup.
type Factory func(t *testing.T, ttl time.Duration) (a, b results.Store)

// Run runs the suite. Its cases run in parallel, each on a store of its
// own.
func Run(t *testing.T, open Factory) {
	run := func(name string, f func(t *testing.T)) {
		t.Run(name, func(t *testing.T) { t.Parallel(); f(t) })
	}
	run("AcceptThenGet", func(t *testing.T) { testAcceptThenGet(t, open) })
	run("AcceptThenGetAtOnceRepeatedly", func(t *testing.T) { testAcceptStress(t, open) })
	run("Apply", func(t *testing.T) { testApply(t, open) })
	run("ApplyBeforeAcceptWritten", func(t *testing.T) { testApplyBeforeWritten(t, open) })
	run("EventsInAnyOrder", func(t *testing.T) { testAnyOrder(t, open, false) })
	run("EventsInAnyOrderOneBatch", func(t *testing.T) { testAnyOrder(t, open, true) })
	run("LateStaleEventsNeverUndoTerminal", func(t *testing.T) { testLateStale(t, open) })
	run("ConcurrentApplies", func(t *testing.T) { testConcurrentApplies(t, open) })
	run("ResponseKeptAsIs", func(t *testing.T) { testResponse(t, open) })
	run("WatchWokenByApply", func(t *testing.T) { testWatch(t, open) })
	run("TTL", func(t *testing.T) { testTTL(t, open) })
	run("ApplyRefreshesTTL", func(t *testing.T) { testTTLRefresh(t, open) })
	run("ClaimStates", func(t *testing.T) { testClaimStates(t, open) })
	run("ClaimReleasedHandsOverSameID", func(t *testing.T) { testClaimReleased(t, open) })
	run("ClaimLeaseRunsOut", func(t *testing.T) { testClaimLease(t, open) })
	run("ClaimConcurrent", func(t *testing.T) { testClaimConcurrent(t, open) })
	run("ClaimExpires", func(t *testing.T) { testClaimExpiry(t, open) })
	run("Admit", func(t *testing.T) { testAdmit(t, open) })
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func accepted(id string) *job.Record {
	now := time.Now().UTC()
	return &job.Record{ID: id, Route: "logs", Backend: "logstore", Client: "team-a",
		Status: job.Queued, AcceptedAt: now, UpdatedAt: now}
}

func event(id string, gen int, st job.Status, attempts int, at time.Time) *job.Event {
	e := &job.Event{ID: id, Route: "logs", Backend: "logstore", Client: "team-a", Gen: gen,
		Status: st, Attempts: attempts, AcceptedAt: at.Add(-time.Second), At: at}
	switch st {
	case job.Retrying:
		e.LastError = "503 Service Unavailable"
	case job.Succeeded:
		e.Response = &job.Response{Status: 200, Headers: map[string]string{"Content-Type": "text/html"},
			Body: "<p>done & dusted</p>", BodyEncoding: "utf8"}
	case job.Failed:
		e.LastError, e.DeadLettered = "500 Internal Server Error", true
		e.Response = &job.Response{Status: 500, Headers: map[string]string{}, Body: "AAEC", BodyEncoding: "base64"}
	}
	return e
}

// lifeEvents is every event of a request's life: delivered on the second
// attempt, then replayed from the dead-letter queue and failed again, each
// event with the attempt log it would carry. Its last event wins whatever
// the order, its log with it.
func lifeEvents(id string) []*job.Event {
	t := time.Now().UTC()
	at := func(ms int) time.Time { return t.Add(time.Duration(ms) * time.Millisecond) }
	log := job.AttemptLog{
		{Attempt: 1, At: at(1), Status: 503, DurationMS: 1},
		{Attempt: 2, At: at(3), Error: "connection refused"},
		{Gen: 1, Attempt: 1, At: at(5), Status: 500, DurationMS: 1},
	}
	withLog := func(e *job.Event, n int) *job.Event {
		e.AttemptLog = log[:n:n]
		return e
	}
	return []*job.Event{
		event(id, 0, job.Queued, 0, at(0)),
		event(id, 0, job.InFlight, 1, at(1)),
		withLog(event(id, 0, job.Retrying, 1, at(2)), 1),
		withLog(event(id, 0, job.InFlight, 2, at(3)), 1),
		withLog(event(id, 0, job.Succeeded, 2, at(4)), 2),
		withLog(event(id, 1, job.Queued, 0, at(5)), 2), // the admin replay
		withLog(event(id, 1, job.Failed, 1, at(6)), 3),
	}
}

// projection is the record e makes on its own.
func projection(e *job.Event) *job.Record {
	var r job.Record
	r.Apply(e)
	return &r
}

// same reports how got differs from want, or "".
func same(got, want *job.Record) string {
	if got == nil {
		return "no record"
	}
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(want)
	if string(g) != string(w) || got.Client != want.Client || got.Gen != want.Gen {
		return fmt.Sprintf("got %s (client %q gen %d), want %s (client %q gen %d)",
			g, got.Client, got.Gen, w, want.Client, want.Gen)
	}
	return ""
}

func mustGet(t *testing.T, s results.Store, id string) *job.Record {
	t.Helper()
	r, err := s.Get(ctxT(t, 5*time.Second), id)
	if err != nil {
		t.Fatalf("get %s: %v", id, err)
	}
	return r
}

func mustApply(t *testing.T, s results.Store, events ...*job.Event) {
	t.Helper()
	if err := s.Apply(ctxT(t, 30*time.Second), events); err != nil {
		t.Fatalf("apply: %v", err)
	}
}

func testAcceptThenGet(t *testing.T, open Factory) {
	a, b := open(t, time.Hour)
	ctx := ctxT(t, 10*time.Second)
	rec := accepted(job.NewID())
	if err := a.Accept(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if d := same(mustGet(t, a, rec.ID), rec); d != "" {
		t.Fatalf("accepted record not readable at once: %s", d)
	}
	wait.For(t, 5*time.Second, "accepted record readable through the other handle", func() bool {
		r, err := b.Get(ctx, rec.ID)
		return err == nil && same(r, rec) == ""
	})
	if _, err := a.Get(ctx, job.NewID()); !errors.Is(err, results.ErrNotFound) {
		t.Fatalf("unknown id: %v, want ErrNotFound", err)
	}
}

// testAcceptStress polls each accepted id at once while the store writes
// accepted records in the background: the record moving from memory to
// the store between the poll's looks must not make it 404.
func testAcceptStress(t *testing.T, open Factory) {
	a, _ := open(t, time.Hour)
	ctx := ctxT(t, 60*time.Second)
	for i := range 1000 {
		rec := accepted(job.NewID())
		_ = a.Accept(ctx, rec)
		if _, err := a.Get(ctx, rec.ID); err != nil {
			t.Fatalf("poll %d right after accept: %v", i, err)
		}
	}
}

func testApply(t *testing.T, open Factory) {
	a, b := open(t, time.Hour)
	ctx := ctxT(t, 10*time.Second)
	id := job.NewID()
	_ = a.Accept(ctx, accepted(id))
	evs := lifeEvents(id)
	for i, e := range evs[1:5] { // the first delivery, in order
		h := []results.Store{a, b}[i%2]
		mustApply(t, h, e)
		if d := same(mustGet(t, a, id), projection(e)); d != "" {
			t.Fatalf("after %s@%d: %s", e.Status, e.Attempts, d)
		}
	}
	if r := mustGet(t, b, id); r.CompletedAt == nil || r.Response == nil {
		t.Fatalf("terminal record without completed_at or response: %+v", r)
	}
	mustApply(t, b, evs[5])
	if d := same(mustGet(t, a, id), projection(evs[5])); d != "" {
		t.Fatalf("the replay's queued event starts a new generation: %s", d)
	}
}

// testApplyBeforeWritten applies an event before the accepted record was
// written: the event wins, and the late write of the accepted record does
// not undo it.
func testApplyBeforeWritten(t *testing.T, open Factory) {
	a, b := open(t, time.Hour)
	ctx := ctxT(t, 10*time.Second)
	id := job.NewID()
	_ = a.Accept(ctx, accepted(id))
	e := event(id, 0, job.InFlight, 1, time.Now().UTC())
	mustApply(t, a, e)
	for _, h := range []results.Store{a, b} {
		if d := same(mustGet(t, h, id), projection(e)); d != "" {
			t.Fatalf("after apply: %s", d)
		}
	}
	// An event older than the accepted record leaves it as it is.
	id2 := job.NewID()
	rec := accepted(id2)
	_ = a.Accept(ctx, rec)
	old := event(id2, 0, job.Queued, 0, rec.UpdatedAt)
	mustApply(t, a, old)
	if r := mustGet(t, b, id2); r.Status != job.Queued {
		t.Fatalf("record after an old event: %+v", r)
	}
}

// permutations returns every order of n items.
func permutations(n int) [][]int {
	if n == 0 {
		return [][]int{{}}
	}
	var out [][]int
	for _, p := range permutations(n - 1) {
		for i := 0; i <= len(p); i++ {
			q := make([]int, 0, n)
			q = append(q, p[:i]...)
			q = append(q, n-1)
			q = append(q, p[i:]...)
			out = append(out, q)
		}
	}
	return out
}

// testAnyOrder applies the events of a request's life in every order, one
// record per order: step by step (the k-th event of every order in one
// Apply, alternating handles), or every event in one Apply batch. Every
// record ends as the last event's projection.
func testAnyOrder(t *testing.T, open Factory, oneBatch bool) {
	a, b := open(t, time.Hour)
	perms := permutations(len(lifeEvents("x")))
	ids := make([]string, len(perms))
	lives := make([][]*job.Event, len(perms))
	for i := range perms {
		ids[i] = job.NewID()
		lives[i] = lifeEvents(ids[i])
	}
	if oneBatch {
		var all []*job.Event
		for k := range perms[0] {
			for i, p := range perms { // interleaved: other records' events between a record's
				all = append(all, lives[i][p[k]])
			}
		}
		mustApply(t, a, all...)
	} else {
		for k := range perms[0] {
			step := make([]*job.Event, len(perms))
			for i, p := range perms {
				step[i] = lives[i][p[k]]
			}
			mustApply(t, []results.Store{a, b}[k%2], step...)
		}
	}
	for i, p := range perms {
		want := projection(lives[i][len(lives[i])-1])
		if d := same(mustGet(t, b, ids[i]), want); d != "" {
			t.Fatalf("events in order %v: %s", p, d)
		}
	}
}

func testLateStale(t *testing.T, open Factory) {
	a, b := open(t, time.Hour)
	id := job.NewID()
	evs := lifeEvents(id)
	mustApply(t, a, evs[1], evs[4]) // in_flight@1, succeeded@2
	want := projection(evs[4])
	later := event(id, 0, job.Failed, 3, time.Now().UTC().Add(time.Second))
	stale := []*job.Event{evs[0], evs[1], evs[2], evs[3], evs[4], later,
		event(id, 0, job.InFlight, 3, time.Now().UTC().Add(time.Second))}
	for i, e := range stale {
		mustApply(t, []results.Store{a, b}[i%2], e)
		if d := same(mustGet(t, a, id), want); d != "" {
			t.Fatalf("after a late %s@%d: %s", e.Status, e.Attempts, d)
		}
	}
	mustApply(t, b, stale...)
	if d := same(mustGet(t, b, id), want); d != "" {
		t.Fatalf("after a batch of late events: %s", d)
	}
}

// testConcurrentApplies has collectors on both handles merge the events
// of many records at once, each record's events racing each other, in
// batches of one to three.
func testConcurrentApplies(t *testing.T, open Factory) {
	a, b := open(t, time.Hour)
	const records, workers = 150, 8
	ids := make([]string, records)
	lives := make([][]*job.Event, records)
	work := make(chan []*job.Event, records*7)
	perms := permutations(7)
	for i := range records {
		ids[i] = job.NewID()
		lives[i] = lifeEvents(ids[i])
		p := perms[(i*7919)%len(perms)]
		for k := 0; k < len(p); {
			n := min(1+(i+k)%3, len(p)-k)
			batch := make([]*job.Event, n)
			for j := range n {
				batch[j] = lives[i][p[k+j]]
			}
			work <- batch
			k += n
		}
	}
	close(work)
	ctx := ctxT(t, 60*time.Second)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		h := []results.Store{a, b}[w%2]
		wg.Go(func() {
			for batch := range work {
				if err := h.Apply(ctx, batch); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("apply: %v", err)
	}
	lost := 0
	var first string
	for i, id := range ids {
		if d := same(mustGet(t, a, id), projection(lives[i][6])); d != "" {
			if lost++; lost == 1 {
				first = d
			}
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d records lost an update; first: %s", lost, records, first)
	}
}

// testResponse stores a response full of characters JSON may escape.
func testResponse(t *testing.T, open Factory) {
	a, b := open(t, time.Hour)
	id := job.NewID()
	e := event(id, 0, job.Succeeded, 1, time.Now().UTC())
	e.Response.Body = strings.Repeat(`<a href="x?a=1&b=2">é ☃ 𝄞</a>`+"\n\t\u2028", 100)
	e.Response.Truncated = true
	mustApply(t, a, e)
	if d := same(mustGet(t, b, id), projection(e)); d != "" {
		t.Fatalf("response changed in the store: %s", d)
	}
}

func testWatch(t *testing.T, open Factory) {
	a, b := open(t, time.Hour)
	id := job.NewID()
	ctx := ctxT(t, 10*time.Second)
	_ = a.Accept(ctx, accepted(id))
	for i, pair := range [][2]results.Store{{a, a}, {a, b}} {
		watcher, applier := pair[0], pair[1]
		ch, stop := watcher.Watch(id)
		mustApply(t, applier, event(id, 0, job.InFlight, i+1, time.Now().UTC()))
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			stop()
			t.Fatalf("watch not woken by an apply through handle %d", i+1)
		}
		stop()
	}
	// A stopped watch is not woken, and stopping it twice is harmless.
	ch, stop := a.Watch(id)
	stop()
	stop()
	mustApply(t, b, event(id, 0, job.Succeeded, 3, time.Now().UTC()))
	select {
	case <-ch:
		t.Fatal("stopped watch was woken")
	default:
	}
}

func testTTL(t *testing.T, open Factory) {
	const ttl = time.Second
	a, b := open(t, ttl)
	ctx := ctxT(t, 20*time.Second)
	acc, applied := job.NewID(), job.NewID()
	_ = a.Accept(ctx, accepted(acc))
	mustApply(t, b, event(applied, 0, job.Succeeded, 1, time.Now().UTC()))
	start := time.Now()
	mustGet(t, a, acc)
	mustGet(t, a, applied)
	for _, id := range []string{acc, applied} {
		wait.For(t, 10*time.Second, "record gone after the ttl", func() bool {
			_, err := b.Get(ctx, id)
			return errors.Is(err, results.ErrNotFound)
		})
	}
	if d := time.Since(start); d < ttl/2 {
		t.Fatalf("records gone after %v, ttl %v", d, ttl)
	}
}

// testTTLRefresh keeps updating a record for longer than the ttl: each
// change restarts its ttl.
func testTTLRefresh(t *testing.T, open Factory) {
	const ttl = 2 * time.Second
	a, b := open(t, ttl)
	ctx := ctxT(t, 20*time.Second)
	id := job.NewID()
	_ = a.Accept(ctx, accepted(id))
	end := time.Now().Add(ttl + ttl/2)
	for n := 1; time.Now().Before(end); n++ {
		mustApply(t, []results.Store{a, b}[n%2], event(id, 0, job.InFlight, n, time.Now().UTC()))
		if _, err := b.Get(ctx, id); err != nil {
			t.Fatalf("record updated %d times, the last just now: %v", n, err)
		}
		time.Sleep(50 * time.Millisecond) // pacing, not waiting: a slow delivery's events
	}
}

func claim(t *testing.T, s results.Store, client, key, id string, lease time.Duration) results.Claim {
	t.Helper()
	c, err := s.Claim(ctxT(t, 10*time.Second), client, key, id, lease)
	if err != nil {
		t.Fatalf("claim %s/%s: %v", client, key, err)
	}
	return c
}

func release(t *testing.T, s results.Store, client, key, id string, queued bool) {
	t.Helper()
	if err := s.Release(ctxT(t, 10*time.Second), client, key, id, queued); err != nil {
		t.Fatalf("release %s/%s: %v", client, key, err)
	}
}

func wantClaim(t *testing.T, what string, got results.Claim, id string, st results.ClaimState) {
	t.Helper()
	if got.ID != id || got.State != st {
		t.Fatalf("%s: got %+v, want {ID:%s State:%d}", what, got, id, st)
	}
}

func testClaimStates(t *testing.T, open Factory) {
	a, b := open(t, time.Hour)
	const lease = time.Hour
	id1 := job.NewID()
	wantClaim(t, "free key", claim(t, a, "c", "k", id1, lease), id1, results.ClaimOwned)
	wantClaim(t, "while the owner writes", claim(t, b, "c", "k", job.NewID(), lease), id1, results.ClaimPending)
	idC2 := job.NewID()
	wantClaim(t, "same key, other client", claim(t, b, "c2", "k", idC2, lease), idC2, results.ClaimOwned)
	idK2 := job.NewID()
	wantClaim(t, "same client, other key", claim(t, a, "c", "k2", idK2, lease), idK2, results.ClaimOwned)

	release(t, b, "c", "k", job.NewID(), true) // not the owner: no effect
	wantClaim(t, "after a stranger's release", claim(t, a, "c", "k", job.NewID(), lease), id1, results.ClaimPending)

	release(t, b, "c", "k", id1, true)
	wantClaim(t, "queued", claim(t, a, "c", "k", job.NewID(), lease), id1, results.ClaimQueued)
	wantClaim(t, "queued, other handle", claim(t, b, "c", "k", job.NewID(), lease), id1, results.ClaimQueued)
	release(t, a, "c", "k", id1, false) // no longer owned: no effect
	wantClaim(t, "queued after a late release", claim(t, b, "c", "k", job.NewID(), lease), id1, results.ClaimQueued)
	wantClaim(t, "other client's key untouched", claim(t, a, "c2", "k", job.NewID(), lease), idC2, results.ClaimPending)
}

// testClaimReleased: a publish that failed (or timed out) hands the key,
// with the same id, to the next claimant, so a retry republishes that id.
func testClaimReleased(t *testing.T, open Factory) {
	a, b := open(t, time.Hour)
	const lease = time.Hour
	id1 := job.NewID()
	wantClaim(t, "free key", claim(t, a, "c", "k", id1, lease), id1, results.ClaimOwned)
	release(t, a, "c", "k", id1, false)
	wantClaim(t, "after a failed publish", claim(t, b, "c", "k", job.NewID(), lease), id1, results.ClaimOwned)
	wantClaim(t, "while the retry writes", claim(t, a, "c", "k", job.NewID(), lease), id1, results.ClaimPending)
	release(t, b, "c", "k", id1, true)
	wantClaim(t, "after the retry queued", claim(t, a, "c", "k", job.NewID(), lease), id1, results.ClaimQueued)
}

// testClaimLease: an owner that dies (or hangs) is replaced once its lease
// runs out, by an owner of the same id.
func testClaimLease(t *testing.T, open Factory) {
	a, b := open(t, time.Hour)
	const lease = 300 * time.Millisecond
	id1 := job.NewID()
	start := time.Now()
	wantClaim(t, "free key", claim(t, a, "c", "k", id1, lease), id1, results.ClaimOwned)
	c := claim(t, b, "c", "k", job.NewID(), time.Hour)
	if time.Since(start) < lease {
		wantClaim(t, "within the lease", c, id1, results.ClaimPending)
	}
	wait.For(t, 10*time.Second, "lease taken over", func() bool {
		c = claim(t, b, "c", "k", job.NewID(), time.Hour)
		return c.State != results.ClaimPending
	})
	wantClaim(t, "after the lease", c, id1, results.ClaimOwned)
	wantClaim(t, "the new owner's lease", claim(t, a, "c", "k", job.NewID(), time.Hour), id1, results.ClaimPending)
	release(t, b, "c", "k", id1, true)
	wantClaim(t, "queued by the new owner", claim(t, a, "c", "k", job.NewID(), time.Hour), id1, results.ClaimQueued)
}

// testClaimConcurrent has many submits with one key claim it at once,
// through both handles: exactly one owns it; when the key was released,
// exactly one owns the same id again.
func testClaimConcurrent(t *testing.T, open Factory) {
	a, b := open(t, time.Hour)
	const n, rounds = 24, 10
	ctx := ctxT(t, 60*time.Second)
	race := func(key string) (owners []results.Claim, all []results.Claim) {
		start := make(chan struct{})
		out := make([]results.Claim, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			h := []results.Store{a, b}[i%2]
			wg.Go(func() {
				<-start
				out[i], errs[i] = h.Claim(ctx, "c", key, job.NewID(), time.Hour)
			})
		}
		close(start)
		wg.Wait()
		for i, c := range out {
			if errs[i] != nil {
				t.Fatalf("claim: %v", errs[i])
			}
			if c.State == results.ClaimOwned {
				owners = append(owners, c)
			}
		}
		return owners, out
	}
	for r := range rounds {
		key := fmt.Sprintf("k%d", r)
		owners, all := race(key)
		if len(owners) != 1 {
			t.Fatalf("round %d, free key: %d owners (%+v)", r, len(owners), owners)
		}
		for _, c := range all {
			if c.ID != owners[0].ID || (c.State != results.ClaimOwned && c.State != results.ClaimPending) {
				t.Fatalf("round %d, free key: claim %+v beside owner %+v", r, c, owners[0])
			}
		}
		release(t, a, "c", key, owners[0].ID, false)
		again, all := race(key)
		if len(again) != 1 || again[0].ID != owners[0].ID {
			t.Fatalf("round %d, released key: owners %+v, want one of %s", r, again, owners[0].ID)
		}
		for _, c := range all {
			if c.ID != owners[0].ID || (c.State != results.ClaimOwned && c.State != results.ClaimPending) {
				t.Fatalf("round %d, released key: claim %+v", r, c)
			}
		}
	}
}

// testClaimExpiry: a key is bound for the store's ttl; then it is free.
func testClaimExpiry(t *testing.T, open Factory) {
	const ttl = time.Second
	a, b := open(t, ttl)
	id1 := job.NewID()
	wantClaim(t, "free key", claim(t, a, "c", "k", id1, time.Hour), id1, results.ClaimOwned)
	release(t, a, "c", "k", id1, true)
	if c := claim(t, b, "c", "k", job.NewID(), time.Hour); c.State != results.ClaimQueued && c.State != results.ClaimOwned {
		t.Fatalf("claim of a queued key: %+v", c)
	}
	var c results.Claim
	id2 := job.NewID()
	wait.For(t, 10*time.Second, "key free after the ttl", func() bool {
		c = claim(t, b, "c", "k", id2, time.Hour)
		return c.State == results.ClaimOwned
	})
	wantClaim(t, "expired key", c, id2, results.ClaimOwned)
	// An owner that never released is gone after the ttl too.
	id3 := job.NewID()
	wantClaim(t, "owned key", claim(t, a, "c", "k3", id3, time.Hour), id3, results.ClaimOwned)
	id4 := job.NewID()
	wait.For(t, 10*time.Second, "owned key free after the ttl", func() bool {
		c = claim(t, b, "c", "k3", id4, time.Hour)
		return c.State == results.ClaimOwned
	})
	wantClaim(t, "expired owned key", c, id4, results.ClaimOwned)
}

func testAdmit(t *testing.T, open Factory) {
	a, b := open(t, time.Hour)
	ctx := ctxT(t, 10*time.Second)
	for i := range 100 {
		if err := a.Admit(); err != nil {
			t.Fatalf("admit %d on a healthy store: %v", i, err)
		}
		_ = a.Accept(ctx, accepted(job.NewID()))
	}
	if err := b.Admit(); err != nil {
		t.Fatalf("admit on the other handle: %v", err)
	}
}

// Running runs s until t ends: t's cleanup ends Run's context, waits for
// Run to return, then closes s, reporting an error of either. Factories
// call it for every handle they return.
func Running(t *testing.T, s results.Store) {
	t.Helper()
	stop := Start(t, s)
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("run: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
}

// Start runs s.Run until stop is called or t ends; stop ends it, waits for
// it and returns its error (the same error to every call).
func Start(t testing.TB, s interface{ Run(context.Context) error }) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() { cancel(); err = <-done })
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}
