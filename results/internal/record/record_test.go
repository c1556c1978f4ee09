package record

import (
	"bytes"
	"strings"
	"testing"

	"github.com/sluice-gw/sluice/job"
)

// TestRankMatchesApply holds job.Status.Rank (which the Redis merge script
// and the stored merge keys use) to job.Record.Apply: within one generation and
// attempt, a record moves from status a to b exactly when b ranks higher.
func TestRankMatchesApply(t *testing.T) {
	all := []job.Status{job.Queued, job.InFlight, job.Retrying, job.Succeeded, job.Failed, "unknown"}
	for _, a := range all {
		for _, b := range all {
			r := Project(&job.Event{ID: "x", Status: a, Attempts: 1})
			moved := r.Apply(&job.Event{ID: "x", Status: b, Attempts: 1})
			if moved != (b.Rank() > a.Rank()) {
				t.Errorf("%s then %s: Apply moved=%v, rank says %v", a, b, moved, b.Rank() > a.Rank())
			}
		}
	}
}

// TestEncodeRecord: the merge key leads (the Redis script reads it by
// position) and nothing is HTML-escaped.
func TestEncodeRecord(t *testing.T) {
	e := &job.Event{ID: "x", Gen: 2, Status: job.Retrying, Attempts: 7, LastError: "<&>",
		Response: &job.Response{Body: strings.Repeat("<", 1000), BodyEncoding: "utf8"}}
	v, err := Encode(Project(e))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(v, []byte(`{"merge":[2,7,2],"id":"x",`)) {
		t.Fatalf("encoded record starts %.60s", v)
	}
	if bytes.Contains(v, []byte(`\u003c`)) || len(v) > 1300 {
		t.Fatalf("HTML-escaped: %d bytes for a 1000-byte body", len(v))
	}
	r, err := Decode(v)
	if err != nil || r.Gen != 2 || r.Attempts != 7 || r.Response.Body != e.Response.Body || r.LastError != "<&>" {
		t.Fatalf("decoded %+v %v", r, err)
	}
}
