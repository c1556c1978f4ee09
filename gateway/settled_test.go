package gateway

import (
	"context"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/results/bolt"
	"github.com/sluice-gw/sluice/results/storetest"
)

// A batch handed out again skips what the store holds an outcome or a
// queued retry of, and delivers what is under way, queued or unknown.
func TestSettledIn(t *testing.T) {
	store, err := bolt.Open(bolt.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	storetest.Running(t, store)
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
