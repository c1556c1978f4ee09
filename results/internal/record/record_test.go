package record

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

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

// TestMergeHeader: a record starts with the version, its status code and
// its generation and attempts as uvarints — what the Redis merge script
// reads — and the status code is the status rank but for failed.
func TestMergeHeader(t *testing.T) {
	for _, st := range []job.Status{job.Queued, job.InFlight, job.Retrying, job.Succeeded, job.Failed, "odd"} {
		v, err := Encode(Project(&job.Event{ID: "x", Gen: 2, Status: st, Attempts: 300}))
		if err != nil {
			t.Fatal(err)
		}
		rank := int(v[1])
		switch v[1] {
		case codeFailed:
			rank = 3
		case codeOther:
			rank = 0
		}
		if v[0] != Version || rank != st.Rank() || !bytes.Equal(v[2:5], []byte{2, 0xac, 0x02}) {
			t.Errorf("%s: record starts % x", st, v[:6])
		}
	}
}

// TestEncodeRecord: nothing is escaped, so a body keeps its size.
func TestEncodeRecord(t *testing.T) {
	e := &job.Event{ID: "x", Gen: 2, Status: job.Retrying, Attempts: 7, LastError: "<&>",
		Response: &job.Response{Body: strings.Repeat("<", 1000), BodyEncoding: "utf8"}}
	v, err := Encode(Project(e))
	if err != nil {
		t.Fatal(err)
	}
	if len(v) > 1100 {
		t.Fatalf("%d bytes for a 1000-byte body", len(v))
	}
	r, err := Decode("x", v)
	if err != nil || r.Gen != 2 || r.Attempts != 7 || r.Response.Body != e.Response.Body || r.LastError != "<&>" {
		t.Fatalf("decoded %+v %v", r, err)
	}
}

// TestCompactSize: the stored form of a succeeded request without a
// response stays small (the store's bytes per record rest on it): 41
// bytes without an attempt log, 53 with its one attempt (sent 200 ms
// after its acceptance, 45 ms), each further attempt about 13 more.
func TestCompactSize(t *testing.T) {
	at := time.Now().UTC()
	e := &job.Event{ID: job.NewIDAt(at), Route: "logs", Backend: "logstore", Client: "team-a",
		Status: job.Succeeded, Attempts: 1, AcceptedAt: at, At: at.Add(250 * time.Millisecond)}
	size := func() int {
		v, err := Encode(Project(e))
		if err != nil {
			t.Fatal(err)
		}
		return len(v)
	}
	if n := size(); n > 48 {
		t.Fatalf("succeeded record without response nor attempt log: %d bytes", n)
	}
	e.AttemptLog = job.AttemptLog{{Attempt: 1, At: at.Add(200 * time.Millisecond), Status: 200, DurationMS: 45}}
	one := size()
	if one > 60 {
		t.Fatalf("succeeded record with one attempt: %d bytes", one)
	}
	e.AttemptLog = job.AttemptLog{
		{Attempt: 1, At: at.Add(20 * time.Millisecond), Status: 503, DurationMS: 45},
		{Attempt: 2, At: at.Add(300 * time.Millisecond), Error: "connection refused"},
		{Attempt: 3, At: at.Add(2 * time.Second), Status: 200, DurationMS: 1200},
	}
	if three := size(); three-one > 2*15 {
		t.Fatalf("two more attempts take %d bytes", three-one)
	}
	t.Logf("%d bytes with one attempt", one)
}

// randomRecord makes a record with every field the compact form has to
// carry, in many combinations.
func randomRecord(rng *rand.Rand) *job.Record {
	pick := func(s ...string) string { return s[rng.IntN(len(s))] }
	zones := []*time.Location{time.UTC, time.FixedZone("", 2*3600), time.FixedZone("", -(5*3600 + 30*60))}
	tm := func() time.Time {
		switch rng.IntN(8) {
		case 0:
			return time.Time{}
		case 1:
			return time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)
		}
		return time.Unix(1_700_000_000+rng.Int64N(1e8), rng.Int64N(1e9)).In(zones[rng.IntN(len(zones))])
	}
	r := &job.Record{ID: job.NewID(), Route: pick("logs", "", "é☃"), Backend: pick("logstore", "b"),
		Client: pick("", "team-a"), Gen: rng.IntN(3), Attempts: rng.IntN(400),
		Status:     job.Status(pick("queued", "in_flight", "retrying", "succeeded", "failed", "weird", "")),
		AcceptedAt: tm(), LastError: pick("", "503 Service Unavailable", "timeout"),
		DeadLettered: rng.IntN(2) == 0}
	r.UpdatedAt = r.AcceptedAt.Add(time.Duration(rng.Int64N(1e12)))
	if rng.IntN(3) == 0 {
		r.UpdatedAt = tm()
	}
	switch rng.IntN(3) {
	case 0:
		c := r.UpdatedAt
		r.CompletedAt = &c
	case 1:
		c := tm()
		r.CompletedAt = &c
	}
	for i := range rng.IntN(4) * rng.IntN(3) {
		a := job.Attempt{Gen: rng.IntN(3), Attempt: i + 1, At: r.AcceptedAt.Add(time.Duration(rng.Int64N(1e11))),
			Status: pick2(rng, 0, 200, 503, 999, -1), Error: pick("", "timeout", "connection refused", "unreachable", "odd ☃"),
			DurationMS: rng.Int64N(1e5)}
		switch rng.IntN(6) {
		case 0:
			a.At = tm()
		case 1:
			a.Attempt, a.DurationMS = -a.Attempt, -1
		}
		r.AttemptLog = append(r.AttemptLog, a)
	}
	if rng.IntN(2) == 0 {
		p := &job.Response{Status: pick2(rng, 200, 500, 0, 999), Body: pick("", "{\"ok\":true}", "AAEC", "<p>\u2028\n</p>"),
			BodyEncoding: pick("utf8", "base64", "", "gzip?"), Truncated: rng.IntN(2) == 0}
		switch rng.IntN(3) {
		case 0:
			p.Headers = map[string]string{}
		case 1:
			p.Headers = map[string]string{"Content-Type": "text/plain; charset=utf-8", "Date": "Mon, 02 Jan 2006 15:04:05 GMT", "X-Empty": ""}
		}
		r.Response = p
	}
	return r
}

func pick2(rng *rand.Rand, v ...int) int { return v[rng.IntN(len(v))] }

// TestCompactRoundTrip: a record read back from the compact form renders
// the same poll answer, byte for byte, and keeps its client and
// generation.
func TestCompactRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 5000 {
		r := randomRecord(rng)
		v, err := Encode(r)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Decode(r.ID, v)
		if err != nil {
			t.Fatalf("decode %+v: %v", r, err)
		}
		want, _ := job.Marshal(r)
		have, _ := job.Marshal(got)
		if !bytes.Equal(want, have) || got.Client != r.Client || got.Gen != r.Gen {
			t.Fatalf("round trip changed the record:\n%s\n%s (client %q gen %d)", want, have, got.Client, got.Gen)
		}
		for n := range len(v) { // every cut is an error, never a panic
			if _, err := Decode(r.ID, v[:n]); err == nil {
				t.Fatalf("a record cut at %d of %d bytes decoded", n, len(v))
			}
		}
	}
}

// goldenRecord is a record as Encode wrote it when the attempt log came,
// and what it decodes to: records already in users' stores look like
// this.
var goldenRecord = struct {
	hex string
	rec *job.Record
}{
	"01" + "03" + "01" + "01" + "c603" + // version, succeeded, gen 1, attempt 1, flags (log, client, last error, completed = updated)
		"04" + "6c6f6773" + "08" + "6c6f6773746f7265" + "06" + "7465616d2d61" + "07" + "74696d656f7574" + // route, backend, client, last error
		"aa9cd8d5f7a4eacc2f" + "80e0ba84bf03" + // accepted_at, updated_at (+1 min)
		"03" + // three attempts: generation, number, time after accepted_at, status, error, milliseconds
		"00" + "02" + "80d0a54c" + "ee07" + "00" + "18" + // #1: +80 ms, 503, 12 ms
		"00" + "04" + "80a8d6b907" + "00" + "02" + "a09c01" + // #2: +1 s, no status, timeout, 10 s
		"02" + "02" + "80e0ba84bf03" + "9003" + "00" + "8801", // replay 1, #1: +1 min, 200, 68 ms
	&job.Record{
		ID: "AY9XqX1xRxYtR9m2c0Jg3kqJ", Route: "logs", Backend: "logstore", Client: "team-a", Gen: 1,
		Status: job.Succeeded, Attempts: 1, LastError: "timeout",
		AcceptedAt: time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC),
		UpdatedAt:  time.Date(2024, 5, 6, 7, 9, 9, 123456789, time.UTC),
		CompletedAt: func() *time.Time {
			c := time.Date(2024, 5, 6, 7, 9, 9, 123456789, time.UTC)
			return &c
		}(),
		AttemptLog: job.AttemptLog{
			{Attempt: 1, At: time.Date(2024, 5, 6, 7, 8, 9, 203456789, time.UTC), Status: 503, DurationMS: 12},
			{Attempt: 2, At: time.Date(2024, 5, 6, 7, 8, 10, 123456789, time.UTC), Error: "timeout", DurationMS: 10000},
			{Gen: 1, Attempt: 1, At: time.Date(2024, 5, 6, 7, 9, 9, 123456789, time.UTC), Status: 200, DurationMS: 68},
		},
	},
}

// TestGoldenRecord pins the compact form with an attempt log, both ways.
func TestGoldenRecord(t *testing.T) {
	v, err := hex.DecodeString(goldenRecord.hex)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(goldenRecord.rec.ID, v)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, goldenRecord.rec) {
		t.Fatalf("decoded\n got %+v\nwant %+v", got, goldenRecord.rec)
	}
	enc, err := Encode(goldenRecord.rec)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(enc, v) {
		t.Fatalf("encoded\n got %x\nwant %x", enc, v)
	}
}

// FuzzDecode: any bytes decode to a record or an error, never a panic,
// and a record that decodes encodes to bytes that decode to the same
// poll answer.
func FuzzDecode(f *testing.F) {
	v, _ := hex.DecodeString(goldenRecord.hex)
	f.Add(v)
	rng := rand.New(rand.NewPCG(3, 4))
	for range 20 {
		v, err := Encode(randomRecord(rng))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(v)
	}
	f.Add([]byte(`{"merge":[1,2,3],"id":"x","status":"queued"}`))
	f.Fuzz(func(t *testing.T, v []byte) {
		r, err := Decode("AY9XqX1xRxYtR9m2c0Jg3kqJ", v)
		if err != nil {
			return
		}
		again, err := Encode(r)
		if err != nil {
			return // a legacy record with negative counts
		}
		back, err := Decode(r.ID, again)
		if err != nil {
			t.Fatalf("re-encoded record does not decode: %v\n%x", err, again)
		}
		want, _ := job.Marshal(r)
		have, _ := job.Marshal(back)
		if !bytes.Equal(want, have) || back.Client != r.Client || back.Gen != r.Gen {
			t.Fatalf("re-encoding changed the record:\n%s\n%s", want, have)
		}
	})
}

// TestDecodeLegacy reads the JSON records stores wrote before the compact
// form: with the merge key, and older ones without it.
func TestDecodeLegacy(t *testing.T) {
	at := time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)
	want := Project(&job.Event{ID: "AZVR1cqAAAAAAAAAAAAAAAAA", Route: "logs", Backend: "logstore", Client: "team-a", Gen: 1,
		Status: job.Succeeded, Attempts: 2, AcceptedAt: at, At: at.Add(time.Second),
		Response: &job.Response{Status: 200, Headers: map[string]string{"Content-Type": "text/html"}, Body: "<p>", BodyEncoding: "utf8"}})
	body, _ := job.Marshal(want)
	withMerge := append([]byte(`{"merge":[1,2,3],`), body[1:len(body)-1]...)
	withMerge = append(withMerge, []byte(`,"client":"team-a","gen":1}`)...)
	older := append(body[:len(body)-1:len(body)-1], []byte(`,"client":"team-a","gen":1}`)...)
	for name, v := range map[string][]byte{"merge key": withMerge, "no merge key": older} {
		got, err := Decode("ignored", v)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		if !bytes.Equal(g, w) || got.Client != "team-a" || got.Gen != 1 {
			t.Fatalf("%s: got %s %q %d, want %s", name, g, got.Client, got.Gen, w)
		}
	}
}
