package wire

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/job"
)

func TestRequestRoundTrip(t *testing.T) {
	r := &job.Request{
		ID: "abc", Route: "logs", Backend: "store", Client: "c", Method: "PUT",
		Path: "/x/y", Query: "a=1&b=2", Header: [][2]string{{"Content-Type", "application/json"}, {"X-A", "1"}, {"X-A", "2"}},
		Body: []byte{0, 1, 2, 0xff}, AcceptedAt: time.Now().UTC(), Attempts: 3, Gen: 1, LastError: "503 Service Unavailable", AvoidURL: 2,
		AttemptLog: job.AttemptLog{{Attempt: 1, At: goldenAt, Status: 0, Error: "timeout", DurationMS: 10000},
			{Gen: 1, Attempt: 1, At: goldenAt.Add(time.Hour), Status: 503, DurationMS: 3}},
	}
	m := EncodeRequest(r)
	if m.Key != "abc" || string(m.Body) != string(r.Body) {
		t.Fatalf("key/body: %+v", m)
	}
	got, err := DecodeRequest(m)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, r) {
		t.Fatalf("round trip changed the request:\n got %+v\nwant %+v", got, r)
	}
	delete(m.Headers, HMethod)
	if _, err := DecodeRequest(m); err == nil {
		t.Fatal("decoded a request without a method")
	}
}

func TestEventRoundTrip(t *testing.T) {
	e := &job.Event{ID: "a", Route: "r", Backend: "b", Status: job.Failed, Attempts: 5, DeadLettered: true, At: time.Now().UTC(),
		AttemptLog: job.AttemptLog{{Attempt: 5, At: goldenAt, Status: 502, DurationMS: 7}}}
	got, err := DecodeEvent(EncodeEvent(e))
	if err != nil || !reflect.DeepEqual(got, e) {
		t.Fatalf("event round trip: %+v %v", got, err)
	}
	var rec job.Record
	if !rec.Apply(got) || rec.CompletedAt == nil || !rec.DeadLettered || len(rec.AttemptLog) != 1 {
		t.Fatalf("terminal event not applied: %+v", rec)
	}
}

func TestEventKeepsHTML(t *testing.T) {
	lt := job.NewResponse(200, nil, []byte("<a>&</a>"), false)
	ev := &job.Event{ID: "x", Status: job.Succeeded, Response: lt}
	if m := EncodeEvent(ev); strings.Contains(string(m.Body), `\u003c`) {
		t.Fatalf("event escapes HTML: %s", m.Body)
	}
}

// goldenAt is the acceptance time of the golden messages.
var goldenAt = time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)

// goldenRequest is a request message exactly as sluice wrote it before
// package wire existed, plus the attempt log header added since: requests
// already waiting in users' queues look like this, and must still decode
// to goldenRequestJob (without the header, to it without a log: see
// TestRequestWithoutAttemptLog).
var goldenRequest = broker.Message{
	Key: "AY9XqX1xRxYtR9m2c0Jg3kqJ",
	Headers: map[string]string{
		"sluice-accepted-at":      "2024-05-06T07:08:09.123456789Z",
		"sluice-attempt-log":      `[{"attempt":1,"at":"2024-05-06T07:08:09.2Z","status":503,"error":"","duration_ms":12},{"attempt":2,"at":"2024-05-06T07:08:10Z","status":0,"error":"connection refused","duration_ms":1},{"attempt":1,"at":"2024-05-06T07:09:10Z","status":502,"error":"","duration_ms":40,"replay":1}]`,
		"sluice-attempts":         "2",
		"sluice-avoid-url":        "2",
		"sluice-backend":          "store",
		"sluice-client":           "team-a",
		"sluice-dead-lettered-at": "2024-05-06T07:09:09.123456789Z",
		"sluice-generation":       "1",
		"sluice-headers":          `[["Content-Type","application/json"],["X-A","1"],["X-A","\u003c2\u003e"]]`,
		"sluice-id":               "AY9XqX1xRxYtR9m2c0Jg3kqJ",
		"sluice-last-error":       "503 Service Unavailable",
		"sluice-method":           "POST",
		"sluice-path":             "/v2/items",
		"sluice-query":            "a=1&b=2",
		"sluice-route":            "orders",
	},
	Body: []byte(`{"n":1}`),
}

var goldenRequestJob = &job.Request{
	ID: "AY9XqX1xRxYtR9m2c0Jg3kqJ", Route: "orders", Backend: "store", Client: "team-a", Method: "POST",
	Path: "/v2/items", Query: "a=1&b=2", Header: [][2]string{{"Content-Type", "application/json"}, {"X-A", "1"}, {"X-A", "<2>"}},
	Body: []byte(`{"n":1}`), AcceptedAt: goldenAt, Attempts: 2, Gen: 1, LastError: "503 Service Unavailable", AvoidURL: 2,
	DeadAt: goldenAt.Add(time.Minute),
	AttemptLog: job.AttemptLog{
		{Attempt: 1, At: goldenAt.Add(76543211 * time.Nanosecond), Status: 503, DurationMS: 12},
		{Attempt: 2, At: goldenAt.Add(876543211 * time.Nanosecond), Error: "connection refused", DurationMS: 1},
		{Gen: 1, Attempt: 1, At: goldenAt.Add(time.Minute + 876543211*time.Nanosecond), Status: 502, DurationMS: 40},
	},
}

// goldenMinimalRequest has only the headers every request message
// carries: the optional ones are left out when empty.
var goldenMinimalRequest = broker.Message{
	Key: "m",
	Headers: map[string]string{
		"sluice-accepted-at": "2024-05-06T07:08:09.123456789Z",
		"sluice-attempts":    "0",
		"sluice-backend":     "store",
		"sluice-generation":  "0",
		"sluice-headers":     "null",
		"sluice-id":          "m",
		"sluice-method":      "GET",
		"sluice-route":       "orders",
	},
}

var goldenMinimalRequestJob = &job.Request{
	ID: "m", Route: "orders", Backend: "store", Method: "GET", AcceptedAt: goldenAt,
}

func TestRequestGolden(t *testing.T) {
	for name, c := range map[string]struct {
		msg broker.Message
		req *job.Request
	}{
		"full":    {goldenRequest, goldenRequestJob},
		"minimal": {goldenMinimalRequest, goldenMinimalRequestJob},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := DecodeRequest(c.msg)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.req) {
				t.Fatalf("decoded\n got %+v\nwant %+v", got, c.req)
			}
			if m := EncodeRequest(c.req); !reflect.DeepEqual(m, c.msg) {
				t.Fatalf("encoded\n got %+v\nwant %+v", m, c.msg)
			}
		})
	}
}

// goldenEvents are event messages exactly as sluice wrote them before
// package wire existed (and one with the attempt log added since), with
// the events they carry.
var goldenEvents = map[string]struct {
	body string
	ev   *job.Event
}{
	"terminal with response": {
		`{"id":"AY9XqX1xRxYtR9m2c0Jg3kqJ","route":"orders","backend":"store","client":"team-a","gen":1,"status":"failed","attempts":3,"accepted_at":"2024-05-06T07:08:09.123456789Z","at":"2024-05-06T07:10:09.123456789Z","last_error":"<b>500</b> & more","response":{"status":500,"headers":{"Content-Type":"text/html","X-Multi":"a, b"},"body":"<p>oops</p>\n","body_encoding":"utf8"},"dead_lettered":true}`,
		&job.Event{
			ID: "AY9XqX1xRxYtR9m2c0Jg3kqJ", Route: "orders", Backend: "store", Client: "team-a", Gen: 1,
			Status: job.Failed, Attempts: 3, AcceptedAt: goldenAt, At: goldenAt.Add(2 * time.Minute),
			LastError: "<b>500</b> & more", DeadLettered: true,
			Response: &job.Response{
				Status: 500, Headers: map[string]string{"Content-Type": "text/html", "X-Multi": "a, b"},
				Body: "<p>oops</p>\n", BodyEncoding: "utf8",
			},
		},
	},
	"retrying with an attempt log": {
		`{"id":"x","route":"r","backend":"b","gen":1,"status":"retrying","attempts":1,"accepted_at":"2024-05-06T07:08:09.123456789Z","at":"2024-05-06T07:10:09.123456789Z","last_error":"timeout","attempt_log":[{"attempt":1,"at":"2024-05-06T07:08:10Z","status":500,"error":"","duration_ms":4},{"attempt":1,"at":"2024-05-06T07:10:09Z","status":0,"error":"timeout","duration_ms":10000,"replay":1}]}`,
		&job.Event{ID: "x", Route: "r", Backend: "b", Gen: 1, Status: job.Retrying, Attempts: 1, AcceptedAt: goldenAt,
			At: goldenAt.Add(2 * time.Minute), LastError: "timeout", AttemptLog: job.AttemptLog{
				{Attempt: 1, At: goldenAt.Add(876543211 * time.Nanosecond), Status: 500, DurationMS: 4},
				{Gen: 1, Attempt: 1, At: goldenAt.Add(2*time.Minute - 123456789*time.Nanosecond), Error: "timeout", DurationMS: 10000},
			}},
	},
	"in flight": {
		`{"id":"x","route":"r","backend":"b","gen":0,"status":"in_flight","attempts":1,"accepted_at":"2024-05-06T07:08:09.123456789Z","at":"2024-05-06T07:08:09.123456789Z"}`,
		&job.Event{ID: "x", Route: "r", Backend: "b", Status: job.InFlight, Attempts: 1, AcceptedAt: goldenAt, At: goldenAt},
	},
	"truncated binary": {
		`{"id":"y","route":"r","backend":"b","gen":2,"status":"succeeded","attempts":1,"accepted_at":"2024-05-06T07:08:09.123456789Z","at":"2024-05-06T07:08:09.123456789Z","response":{"status":200,"headers":{},"body":"//4=","body_encoding":"base64","truncated":true}}`,
		&job.Event{
			ID: "y", Route: "r", Backend: "b", Gen: 2, Status: job.Succeeded, Attempts: 1, AcceptedAt: goldenAt, At: goldenAt,
			Response: &job.Response{Status: 200, Headers: map[string]string{}, Body: "//4=", BodyEncoding: "base64", Truncated: true},
		},
	},
}

func TestEventGolden(t *testing.T) {
	for name, c := range goldenEvents {
		t.Run(name, func(t *testing.T) {
			got, err := DecodeEvent(broker.Message{Key: c.ev.ID, Body: []byte(c.body)})
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.ev) {
				t.Fatalf("decoded\n got %+v\nwant %+v", got, c.ev)
			}
			m := EncodeEvent(c.ev)
			if m.Key != c.ev.ID || m.Headers != nil || string(m.Body) != c.body {
				t.Fatalf("encoded key %q headers %v body\n got %s\nwant %s", m.Key, m.Headers, m.Body, c.body)
			}
		})
	}
}

func TestDecodeEventRefuses(t *testing.T) {
	for name, body := range map[string]string{
		"not json":  `{"id":`,
		"no id":     `{"status":"queued"}`,
		"no status": `{"id":"a"}`,
	} {
		if _, err := DecodeEvent(broker.Message{Key: "k", Body: []byte(body)}); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

// TestRequestWithoutAttemptLog: a request queued before the attempt log
// existed decodes without one; a log that cannot be read is dropped, and
// the request still delivered.
func TestRequestWithoutAttemptLog(t *testing.T) {
	for name, v := range map[string]string{"absent": "", "corrupt": `[{"attempt":"one"}`} {
		m := broker.Message{Key: goldenRequest.Key, Headers: map[string]string{}, Body: goldenRequest.Body}
		for k, h := range goldenRequest.Headers {
			m.Headers[k] = h
		}
		delete(m.Headers, HAttemptLog)
		if v != "" {
			m.Headers[HAttemptLog] = v
		}
		got, err := DecodeRequest(m)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		want := *goldenRequestJob
		want.AttemptLog = nil
		if !reflect.DeepEqual(got, &want) {
			t.Fatalf("%s: decoded\n got %+v\nwant %+v", name, got, &want)
		}
	}
}
