package bolt

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/job"
)

// storeBytes is the size of the store's files in dir.
func storeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var total int64
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		fi, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		total += fi.Size()
	}
	return total
}

// TestBytesPerRecord: many requests' lives (accepted, in flight,
// succeeded on the first attempt, whose entry the attempt log keeps, as
// the collector writes them) take at most 200 bytes of file per record
// when no response is kept. The JSON records and the single file of
// earlier releases took about 670.
func TestBytesPerRecord(t *testing.T) {
	for _, tc := range []struct {
		name     string
		response *job.Response
		max      float64
	}{
		{"no response", nil, 200},
		{"small response", &job.Response{Status: 200, Headers: map[string]string{"Content-Length": "11",
			"Content-Type": "text/plain; charset=utf-8", "Date": "Mon, 02 Jan 2006 15:04:05 GMT", "Server": "fasthttp"},
			Body: `{"ok":true}`, BodyEncoding: "utf8"}, 350},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openIdle(t, Options{Dir: dir, TTL: time.Hour})
			ctx := context.Background()
			const n = 40000
			start := time.Now().UTC()
			ids := make([]string, n)
			for i := range ids { // 2,000 a second
				at := start.Add(time.Duration(i) * 500 * time.Microsecond)
				ids[i] = job.NewIDAt(at)
				_ = s.Accept(ctx, &job.Record{ID: ids[i], Route: "logs", Backend: "logstore", Status: job.Queued, AcceptedAt: at, UpdatedAt: at})
				if i%100 == 99 { // a flush every 50 ms
					if err := s.flush(); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := s.flush(); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < n; i += 256 { // the collector's batches
				var evs []*job.Event
				for _, id := range ids[i:min(i+256, n)] {
					acc, _ := job.IssuedAt(id)
					at := acc.UTC().Add(3 * time.Millisecond)
					fly := &job.Event{ID: id, Route: "logs", Backend: "logstore", Status: job.InFlight, Attempts: 1, AcceptedAt: acc.UTC(), At: at}
					done := *fly
					done.Status, done.At, done.Response = job.Succeeded, at.Add(2*time.Millisecond), tc.response
					done.AttemptLog = job.AttemptLog{{Attempt: 1, At: at.Add(-time.Millisecond), Status: 200, DurationMS: 2}}
					evs = append(evs, fly, &done)
				}
				if err := s.Apply(ctx, evs); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			per := float64(storeBytes(t, dir)) / n
			t.Logf("%s: %.1f bytes per record", tc.name, per)
			if per > tc.max {
				t.Fatalf("%.1f bytes per record, want at most %.0f", per, tc.max)
			}
		})
	}
}
