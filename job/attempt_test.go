package job

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)

// play makes req's attempts the way workers report them — in_flight with
// the log so far, then the outcome with the attempt added — and returns
// every event in publishing order and the request as it stands after (a
// retry's or a dead letter's copy). statuses are the backend's answers,
// 0 for a refused connection; 2xx ends it, as does running out of them
// (a dead letter).
func play(req *Request, statuses ...int) ([]*Event, *Request) {
	r := *req
	var evs []*Event
	for i, st := range statuses {
		n := r.Attempts + 1
		at := r.AcceptedAt.Add(time.Duration(r.Gen*1000+n*100) * time.Millisecond)
		fly := EventFor(&r, InFlight, n)
		fly.At = at
		a := Attempt{Gen: r.Gen, Attempt: n, At: at, Status: st, DurationMS: int64(10 * n)}
		if st == 0 {
			a.Error = "connection refused"
		}
		r.AttemptLog = r.AttemptLog.With(a)
		r.Attempts = n
		out := Retrying
		switch {
		case st >= 200 && st < 300:
			out = Succeeded
		case i == len(statuses)-1:
			out = Failed
		}
		done := EventFor(&r, out, n)
		done.At, done.DeadLettered = at.Add(time.Duration(a.DurationMS)*time.Millisecond), out == Failed
		evs = append(evs, fly, done)
	}
	return evs, &r
}

// replay is what workers.DeadLetters.Replay does to a dead letter.
func replay(req *Request) (*Event, *Request) {
	r := *req
	r.Attempts, r.LastError, r.Gen = 0, "", r.Gen+1
	ev := EventFor(&r, Queued, 0)
	ev.At = r.AcceptedAt.Add(time.Duration(r.Gen*1000) * time.Millisecond)
	return ev, &r
}

func newRequest() *Request {
	return &Request{ID: "AY9XqX1xRxYtR9m2c0Jg3kqJ", Route: "logs", Backend: "store", Client: "team-a", AcceptedAt: t0}
}

// applyAll applies evs in order to a fresh record.
func applyAll(evs []*Event, order []int) *Record {
	var r Record
	for _, i := range order {
		r.Apply(evs[i])
	}
	return &r
}

// permutations returns every order of n items (Heap's algorithm).
func permutations(n int) [][]int {
	p := make([]int, n)
	for i := range p {
		p[i] = i
	}
	out := [][]int{slices.Clone(p)}
	c := make([]int, n)
	for i := 0; i < n; {
		if c[i] < i {
			if i%2 == 0 {
				p[0], p[i] = p[i], p[0]
			} else {
				p[c[i]], p[i] = p[i], p[c[i]]
			}
			out = append(out, slices.Clone(p))
			c[i]++
			i = 0
		} else {
			c[i] = 0
			i++
		}
	}
	return out
}

func logOf(r *Record) string {
	var b strings.Builder
	for _, a := range r.AttemptLog {
		fmt.Fprintf(&b, "g%d#%d:%d%s ", a.Gen, a.Attempt, a.Status, a.Error)
	}
	return strings.TrimSpace(b.String())
}

// TestApplyAttemptLog: 503, 503, then 200. However the events arrive —
// in order, in any order, each twice — the record ends with the log of
// all three attempts.
func TestApplyAttemptLog(t *testing.T) {
	evs, _ := play(newRequest(), 503, 503, 200)
	const want = "g0#1:503 g0#2:503 g0#3:200"
	last := evs[len(evs)-1]
	for _, order := range permutations(len(evs)) {
		r := applyAll(evs, order)
		if logOf(r) != want || r.Status != Succeeded || r.Attempts != 3 {
			t.Fatalf("order %v: %s %s@%d, want %s", order, r.Status, logOf(r), r.Attempts, want)
		}
		if !reflect.DeepEqual(r, applyAll([]*Event{last}, []int{0})) {
			t.Fatalf("order %v: the record is not the last event's projection", order)
		}
	}
	// Each event twice, the duplicates late and in reverse: nothing moves.
	twice := append(slices.Clone(evs), evs...)
	slices.Reverse(twice[len(evs):])
	order := make([]int, len(twice))
	for i := range order {
		order[i] = i
	}
	var r Record
	for _, i := range order {
		before := logOf(&r)
		moved := r.Apply(twice[i])
		if i >= len(evs) && (moved || logOf(&r) != before) {
			t.Fatalf("duplicate %s@%d changed the record", twice[i].Status, twice[i].Attempts)
		}
	}
	if logOf(&r) != want {
		t.Fatalf("with duplicates: %s, want %s", logOf(&r), want)
	}
	// Pending, the log shows the attempts made so far.
	r = Record{}
	r.Apply(evs[3]) // retrying@2
	if logOf(&r) != "g0#1:503 g0#2:503" {
		t.Fatalf("retrying@2: %s", logOf(&r))
	}
	r.Apply(evs[4]) // in_flight@3: no outcome yet
	if logOf(&r) != "g0#1:503 g0#2:503" || r.Status != InFlight {
		t.Fatalf("in_flight@3: %s %s", r.Status, logOf(&r))
	}
}

// TestApplyAttemptLogReplay: two refused connections and a dead letter,
// then a replay that succeeds. The replay's attempts count from 1 again
// and follow the earlier ones, marked with their generation; late events
// of the first generation change nothing, in any order.
func TestApplyAttemptLogReplay(t *testing.T) {
	first, dead := play(newRequest(), 0, 0)
	queued, again := replay(dead)
	second, _ := play(again, 200)
	evs := append(append(first, queued), second...)
	const want = "g0#1:0connection refused g0#2:0connection refused g1#1:200"
	for _, order := range permutations(len(evs)) {
		r := applyAll(evs, order)
		if logOf(r) != want || r.Status != Succeeded || r.Gen != 1 || r.Attempts != 1 || r.DeadLettered {
			t.Fatalf("order %v: %s gen %d %s@%d, want %s", order, r.Status, r.Gen, logOf(r), r.Attempts, want)
		}
	}
	// Right after the replay, the record is queued again and shows the
	// first generation's attempts.
	var r Record
	r.Apply(first[len(first)-1])
	if !r.Apply(queued) || r.Status != Queued || logOf(&r) != "g0#1:0connection refused g0#2:0connection refused" {
		t.Fatalf("replayed: %s %s", r.Status, logOf(&r))
	}
	b, _ := Marshal(&r)
	if !strings.Contains(string(b), `"attempt_log":[{"attempt":1,`) || strings.Contains(string(b), `"replay"`) {
		t.Fatalf("poll after the replay: %s", b)
	}
	r.Apply(second[1])
	b, _ = Marshal(r.AttemptLog[2])
	if want := `{"attempt":1,"at":"2024-05-06T07:08:10.223456789Z","status":200,"error":"","duration_ms":10,"replay":1}`; string(b) != want {
		t.Fatalf("replayed attempt:\n got %s\nwant %s", b, want)
	}
}

func TestAttemptLogWith(t *testing.T) {
	a := func(gen, n, st int) Attempt { return Attempt{Gen: gen, Attempt: n, Status: st} }
	var l AttemptLog
	l = l.With(a(0, 2, 503)).With(a(0, 1, 503)).With(a(1, 1, 500)).With(a(0, 3, 503))
	if got := logOf(&Record{AttemptLog: l}); got != "g0#1:503 g0#2:503 g0#3:503 g1#1:500" {
		t.Fatalf("out of order: %s", got)
	}
	// The same attempt again (a redelivery) replaces its entry.
	again := l.With(a(0, 2, 200))
	if got := logOf(&Record{AttemptLog: again}); got != "g0#1:503 g0#2:200 g0#3:503 g1#1:500" {
		t.Fatalf("attempt made again: %s", got)
	}
	if l[1].Status != 503 {
		t.Fatal("With changed the log it was called on")
	}
	// With never writes into the spare capacity of a shared log.
	base := make(AttemptLog, 1, 10)
	base[0] = a(0, 1, 503)
	x, y := base.With(a(0, 2, 500)), base.With(a(0, 2, 502))
	if x[1].Status != 500 || y[1].Status != 502 {
		t.Fatalf("logs made from one share memory: %v %v", x, y)
	}
}

// TestAttemptLogBound: past MaxAttemptLog, the first AttemptLogFirst
// attempts and the latest ones stay.
func TestAttemptLogBound(t *testing.T) {
	var l AttemptLog
	for gen := range 3 {
		for n := 1; n <= 60; n++ {
			l = l.With(Attempt{Gen: gen, Attempt: n, Status: 503})
		}
	}
	if len(l) != MaxAttemptLog {
		t.Fatalf("%d entries, want %d", len(l), MaxAttemptLog)
	}
	for i := range AttemptLogFirst {
		if l[i].Gen != 0 || l[i].Attempt != i+1 {
			t.Fatalf("entry %d: %+v, want the first attempts", i, l[i])
		}
	}
	if l[AttemptLogFirst].Gen != 1 || l[AttemptLogFirst].Attempt != 31 || l[len(l)-1].Gen != 2 || l[len(l)-1].Attempt != 60 {
		t.Fatalf("after the first: %+v ... %+v, want gen 1 #31 ... gen 2 #60", l[AttemptLogFirst], l[len(l)-1])
	}
	if !slices.IsSortedFunc(l, compareAttempts) {
		t.Fatal("log out of order")
	}
}

// TestAttemptLogJSON pins the poll's shape of the log: [] when empty, and
// the entry of SPEC §6.
func TestAttemptLogJSON(t *testing.T) {
	b, _ := Marshal(&Record{})
	if !strings.HasSuffix(string(b), `"dead_lettered":false,"attempt_log":[]}`) {
		t.Fatalf("record without attempts: %s", b)
	}
	l := AttemptLog{
		{Attempt: 1, At: t0, Status: 503, DurationMS: 12},
		{Attempt: 2, At: t0.Add(time.Second), Error: "connection refused"},
	}
	b, _ = Marshal(l)
	want := `[{"attempt":1,"at":"2024-05-06T07:08:09.123456789Z","status":503,"error":"","duration_ms":12},` +
		`{"attempt":2,"at":"2024-05-06T07:08:10.123456789Z","status":0,"error":"connection refused","duration_ms":0}]`
	if string(b) != want {
		t.Fatalf("log:\n got %s\nwant %s", b, want)
	}
	var back AttemptLog
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, l) {
		t.Fatalf("read back %+v %v", back, err)
	}
}

// TestAttemptLogJSONAsEncodingJSON: a log writes what encoding/json
// writes for its entries, whatever they hold, with HTML escaping or
// without as asked.
func TestAttemptLogJSONAsEncodingJSON(t *testing.T) {
	zone := time.FixedZone("", -(5*3600 + 30*60))
	var l AttemptLog
	for i, e := range []string{"", "timeout", `a "quoted" \\ one`, "<&>", "\u2028 é\x01"} {
		l = append(l, Attempt{Attempt: i - 1, At: t0.Add(time.Duration(i) * 7777 * time.Microsecond).In(zone),
			Status: 1000*i - 1, Error: e, DurationMS: int64(i) << 40, Gen: i % 3})
	}
	l = append(l, Attempt{})
	got, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	type plain Attempt // without the log's MarshalJSON
	ps := make([]plain, len(l))
	for i, a := range l {
		ps[i] = plain(a)
	}
	want, _ := json.Marshal(ps)
	if string(got) != string(want) {
		t.Fatalf("log:\n got %s\nwant %s", got, want)
	}
	got, _ = Marshal(l)
	want, _ = Marshal(ps)
	if string(got) != string(want) {
		t.Fatalf("log without HTML escaping:\n got %s\nwant %s", got, want)
	}
	if _, err := json.Marshal(AttemptLog{{At: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}}); err == nil {
		t.Fatal("a year past 9999 encoded")
	}
}
