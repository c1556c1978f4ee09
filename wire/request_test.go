package wire

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/job"
)

// TestHeadersJSON: the fast path writes what encoding/json writes, for
// plain headers and for every kind of character it escapes.
func TestHeadersJSON(t *testing.T) {
	for name, h := range map[string][][2]string{
		"nil":        nil,
		"empty":      {},
		"plain":      {{"Content-Type", "application/json"}, {"X-A", "1"}, {"X-A", "2 ~ !#$%'()*+,-./:;=?@[]^_`{|}"}},
		"empty pair": {{"", ""}},
		"html":       {{"X-A", "<b>&</b>"}},
		"quote":      {{"X-A", `say "hi"`}},
		"backslash":  {{"X-A", `C:\dir`}},
		"control":    {{"X-A", "a\tb\x01\x7f"}},
		"utf8":       {{"X-A", "grüße \u2028"}},
		"invalid":    {{"X-A", "\xff\xfe"}},
	} {
		want, _ := json.Marshal(h)
		if got := headersJSON(h); got != string(want) {
			t.Errorf("%s: got %s, want %s", name, got, want)
		}
	}
}

// FuzzHeadersJSON: headersJSON is json.Marshal for any header.
func FuzzHeadersJSON(f *testing.F) {
	f.Add("Content-Type", "application/json")
	f.Add("X-A", "<\"\\\x00\xff>")
	f.Fuzz(func(t *testing.T, k, v string) {
		h := [][2]string{{k, v}, {"X-B", "b"}}
		want, _ := json.Marshal(h)
		if got := headersJSON(h); got != string(want) {
			t.Fatalf("got %s, want %s", got, want)
		}
	})
}

// BenchmarkEncodeRequest is what ingress encodes per submit.
func BenchmarkEncodeRequest(b *testing.B) {
	now := time.Now()
	r := &job.Request{
		ID: job.NewIDAt(now), Route: "logs", Backend: "logs", Method: "POST",
		Header: [][2]string{{"Content-Type", "application/json"}}, Body: []byte(strings.Repeat("x", 1024)),
		AcceptedAt: now,
	}
	b.ReportAllocs()
	for b.Loop() {
		EncodeRequest(r)
	}
}

// BenchmarkDecodeRequest is what a worker decodes per delivery.
func BenchmarkDecodeRequest(b *testing.B) {
	now := time.Now()
	m := EncodeRequest(&job.Request{
		ID: job.NewIDAt(now), Route: "logs", Backend: "logs", Method: "POST",
		Header: [][2]string{{"Content-Type", "application/json"}}, Body: []byte(strings.Repeat("x", 1024)),
		AcceptedAt: now,
	})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeRequest(m); err != nil {
			b.Fatal(err)
		}
	}
}

// benchLog is the attempt log a request carries after three attempts.
func benchLog(now time.Time) job.AttemptLog {
	var l job.AttemptLog
	for n := 1; n <= 3; n++ {
		l = l.With(job.Attempt{Attempt: n, At: now.Add(time.Duration(n) * time.Second).UTC(), Status: 503, DurationMS: 12})
	}
	return l
}

// BenchmarkEncodeRetry is what a worker encodes for a retry's copy after
// the third attempt: the request with its attempt log.
func BenchmarkEncodeRetry(b *testing.B) {
	now := time.Now()
	r := &job.Request{
		ID: job.NewIDAt(now), Route: "logs", Backend: "logs", Method: "POST",
		Header: [][2]string{{"Content-Type", "application/json"}}, Body: []byte(strings.Repeat("x", 1024)),
		AcceptedAt: now, Attempts: 3, LastError: "503 Service Unavailable", AttemptLog: benchLog(now),
	}
	b.ReportAllocs()
	for b.Loop() {
		EncodeRequest(r)
	}
}

// BenchmarkEncodeEventLog is a retrying event after the third attempt.
func BenchmarkEncodeEventLog(b *testing.B) {
	now := time.Now()
	e := &job.Event{ID: job.NewIDAt(now), Route: "logs", Backend: "logs", Status: job.Retrying,
		Attempts: 3, AcceptedAt: now, At: now, LastError: "503 Service Unavailable", AttemptLog: benchLog(now)}
	b.ReportAllocs()
	for b.Loop() {
		EncodeEvent(e)
	}
}
