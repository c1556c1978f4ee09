package job

import (
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestRequestRoundTrip(t *testing.T) {
	r := &Request{
		ID: "abc", Route: "logs", Backend: "store", Client: "c", Method: "PUT",
		Path: "/x/y", Query: "a=1&b=2", Header: [][2]string{{"Content-Type", "application/json"}, {"X-A", "1"}, {"X-A", "2"}},
		Body: []byte{0, 1, 2, 0xff}, AcceptedAt: time.Now().UTC(), Attempts: 3, Gen: 1, LastError: "503 Service Unavailable", AvoidURL: 2,
	}
	m := r.Message()
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

func TestNewResponse(t *testing.T) {
	h := http.Header{"X-Multi": {"a", "b"}}
	r := NewResponse(200, h, []byte("héllo"), false)
	if r.Headers["X-Multi"] != "a, b" || r.BodyEncoding != "utf8" || r.Body != "héllo" {
		t.Fatalf("utf8 response: %+v", r)
	}
	r = NewResponse(500, nil, []byte{0xff, 0xfe}, false)
	if r.BodyEncoding != "base64" || string(r.BodyBytes()) != "\xff\xfe" {
		t.Fatalf("binary response: %+v", r)
	}
}

func TestEventRoundTrip(t *testing.T) {
	e := &Event{ID: "a", Route: "r", Backend: "b", Status: Failed, Attempts: 5, DeadLettered: true, At: time.Now().UTC()}
	got, err := DecodeEvent(e.Message())
	if err != nil || !reflect.DeepEqual(got, e) {
		t.Fatalf("event round trip: %+v %v", got, err)
	}
	var rec Record
	if !rec.Apply(got) || rec.CompletedAt == nil || !rec.DeadLettered {
		t.Fatalf("terminal event not applied: %+v", rec)
	}
}

func TestForwardable(t *testing.T) {
	for name, want := range map[string]bool{
		"Content-Type": true, "traceparent": true, "Authorization": false, "x-api-key": false,
		"Connection": false, "Transfer-Encoding": false, "X-Drop-Me": false, "Host": false,
	} {
		if got := Forwardable(name, "close, X-Drop-Me"); got != want {
			t.Errorf("Forwardable(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestNewResponseTruncated(t *testing.T) {
	h := http.Header{"Content-Length": {"2000000"}, "Etag": {`"x"`}, "Content-Type": {"text/plain"}}
	body := []byte(strings.Repeat("é", MaxStoredBody/2))   // exactly MaxStoredBody bytes
	r := NewResponse(200, h, body[:MaxStoredBody-1], true) // cut mid-character
	if !r.Truncated || r.BodyEncoding != "utf8" || len(r.Body) != MaxStoredBody-2 {
		t.Fatalf("cut body: truncated %v encoding %s len %d", r.Truncated, r.BodyEncoding, len(r.Body))
	}
	if _, ok := r.Headers["Content-Length"]; ok || r.Headers["Etag"] != "" || r.Headers["Content-Type"] != "text/plain" {
		t.Fatalf("headers of a cut body: %v", r.Headers)
	}
	whole := NewResponse(200, h, []byte("ok"), false)
	if whole.Truncated || whole.Headers["Content-Length"] == "" {
		t.Fatalf("whole body marked: %+v", whole)
	}
	escaped := NewResponse(200, nil, []byte(strings.Repeat("\x01", MaxStoredBody)), false)
	if !escaped.Truncated || len(escaped.Body)*6 > MaxEncodedBody {
		t.Fatalf("control characters: truncated %v, %d bytes (%d escaped)", escaped.Truncated, len(escaped.Body), len(escaped.Body)*6)
	}
	many := http.Header{}
	for i := range 2000 {
		many.Set(fmt.Sprintf("X-H%d", i), strings.Repeat("v", 100))
	}
	if r := NewResponse(200, many, nil, false); !r.Truncated || len(r.Headers) >= 2000 {
		t.Fatalf("200 KB of headers kept whole: %d, truncated %v", len(r.Headers), r.Truncated)
	}
	lt := NewResponse(200, nil, []byte("<a>&</a>"), false)
	ev := &Event{ID: "x", Status: Succeeded, Response: lt}
	if m := ev.Message(); strings.Contains(string(m.Body), `\u003c`) {
		t.Fatalf("event escapes HTML: %s", m.Body)
	}
}

func TestID(t *testing.T) {
	at := time.UnixMilli(1_700_000_000_123)
	a, b := NewIDAt(at), NewIDAt(at)
	if a == b || len(a) != 24 {
		t.Fatalf("ids %q %q: want distinct, 24 characters", a, b)
	}
	if got, ok := IssuedAt(a); !ok || !got.Equal(at) {
		t.Fatalf("IssuedAt(%q) = %v %v, want %v", a, got, ok, at)
	}
	if _, ok := IssuedAt("not an id"); ok {
		t.Fatal("a foreign id read as issued")
	}
}
