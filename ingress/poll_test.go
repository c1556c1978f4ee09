package ingress

import (
	"context"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/job"
)

// TestRenderGolden pins what a poll answers: the bytes are the ones sluice
// wrote before the client shape moved out of job, with the attempt_log of
// SPEC §6 at the end ([] before the first attempt; an attempt of a replay
// marked with its generation).
func TestRenderGolden(t *testing.T) {
	t.Parallel()
	at := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	done := at.Add(2 * time.Minute)
	for name, c := range map[string]struct {
		rec  *job.Record
		want string
	}{
		"terminal": {
			&job.Record{
				ID: "AY9XqX1xRxYtR9m2c0Jg3kqJ", Route: "orders", Backend: "store", Status: job.Failed, Attempts: 3,
				AcceptedAt: at, UpdatedAt: done, CompletedAt: &done, LastError: "<b>500</b> & more", DeadLettered: true,
				Response: &job.Response{
					Status: 500, Headers: map[string]string{"Content-Type": "text/html", "X-Multi": "a, b"},
					Body: "<p>oops</p>\n", BodyEncoding: "utf8",
				},
				Client: "team-a", Gen: 1,
				AttemptLog: job.AttemptLog{
					{Attempt: 1, At: at.Add(76543211 * time.Nanosecond), Status: 503, DurationMS: 12},
					{Attempt: 2, At: at.Add(876543211 * time.Nanosecond), Error: "timeout", DurationMS: 10000},
					{Gen: 1, Attempt: 1, At: done.Add(-23456789 * time.Nanosecond), Status: 500, DurationMS: 3},
				},
			},
			`{"id":"AY9XqX1xRxYtR9m2c0Jg3kqJ","route":"orders","backend":"store","status":"failed","attempts":3,"accepted_at":"2024-05-06T07:08:09.123456789Z","updated_at":"2024-05-06T07:10:09.123456789Z","completed_at":"2024-05-06T07:10:09.123456789Z","last_error":"<b>500</b> & more","response":{"status":500,"headers":{"Content-Type":"text/html","X-Multi":"a, b"},"body":"<p>oops</p>\n","body_encoding":"utf8"},"dead_lettered":true,"attempt_log":[{"attempt":1,"at":"2024-05-06T07:08:09.2Z","status":503,"error":"","duration_ms":12},{"attempt":2,"at":"2024-05-06T07:08:10Z","status":0,"error":"timeout","duration_ms":10000},{"attempt":1,"at":"2024-05-06T07:10:09.1Z","status":500,"error":"","duration_ms":3,"replay":1}]}`,
		},
		"in flight": {
			&job.Record{ID: "x", Route: "r", Backend: "b", Status: job.InFlight, Attempts: 1, AcceptedAt: at, UpdatedAt: at},
			`{"id":"x","route":"r","backend":"b","status":"in_flight","attempts":1,"accepted_at":"2024-05-06T07:08:09.123456789Z","updated_at":"2024-05-06T07:08:09.123456789Z","dead_lettered":false,"attempt_log":[]}`,
		},
		"truncated": {
			&job.Record{
				ID: "y", Route: "r", Backend: "b", Status: job.Succeeded, Attempts: 1, AcceptedAt: at, UpdatedAt: at, CompletedAt: &at,
				Response: &job.Response{Status: 200, Headers: map[string]string{}, Body: "//4=", BodyEncoding: "base64", Truncated: true},
			},
			`{"id":"y","route":"r","backend":"b","status":"succeeded","attempts":1,"accepted_at":"2024-05-06T07:08:09.123456789Z","updated_at":"2024-05-06T07:08:09.123456789Z","completed_at":"2024-05-06T07:08:09.123456789Z","response":{"status":200,"headers":{},"body":"//4=","body_encoding":"base64","truncated":true},"dead_lettered":false,"attempt_log":[]}`,
		},
	} {
		if got := string(render(c.rec)); got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", name, got, c.want)
		}
	}
}

// /response of an outcome stored without its response: 410 when
// results.keep_response dropped it, 502 when the backend never answered.
func TestReplayWithoutResponse(t *testing.T) {
	for _, c := range []struct {
		keep   job.Keep
		status job.Status
		want   int
	}{
		{job.KeepAlways, job.Failed, 502},
		{job.KeepFailures, job.Failed, 502},
		{job.KeepFailures, job.Succeeded, 410},
		{job.KeepNever, job.Failed, 410},
		{job.KeepNever, job.Succeeded, 410},
	} {
		s, st := testServer(t, "durable", func(context.Context, string, broker.Message) error { return nil })
		s.keep = c.keep
		now := time.Now().UTC()
		st.recs["x"] = &job.Record{ID: "x", Route: "r", Backend: "b", Status: c.status, AcceptedAt: now, UpdatedAt: now,
			CompletedAt: &now, LastError: "503 Service Unavailable"}
		if got := call(s, "GET", "/v1/requests/x/response", "", nil).Response.StatusCode(); got != c.want {
			t.Errorf("keep %d, %s without a response: %d, want %d", c.keep, c.status, got, c.want)
		}
	}
}
