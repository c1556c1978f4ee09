package admin

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/job"
)

// fakeRecords is a result store's Get.
type fakeRecords struct {
	get func(id string) (*job.Record, error)
}

var _ Records = fakeRecords{}

func (f fakeRecords) Get(_ context.Context, id string) (*job.Record, error) { return f.get(id) }

// TestRequest: GET /admin/requests/<id> answers the poll's JSON byte for
// byte, attempt log included, whichever client owns the request; an
// unknown id is a 404 problem, a store away a 503 with Retry-After; the
// admin token guards it.
func TestRequest(t *testing.T) {
	h, _ := testHandler(t, "s3cret")
	auth := map[string]string{"Authorization": "Bearer s3cret"}
	at := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	rec := &job.Record{ID: "AY9XqX1xRxYtR9m2c0Jg3kqJ", Route: "logs", Backend: "logstore", Client: "team-a", Gen: 1,
		Status: job.Retrying, Attempts: 1, AcceptedAt: at, UpdatedAt: at.Add(time.Second), LastError: "timeout",
		AttemptLog: job.AttemptLog{
			{Attempt: 1, At: at.Add(time.Millisecond), Status: 503, DurationMS: 12},
			{Gen: 1, Attempt: 1, At: at.Add(time.Second), Error: "timeout", DurationMS: 10000},
		}}
	h.Records = fakeRecords{func(id string) (*job.Record, error) {
		switch id {
		case rec.ID:
			return rec, nil
		case "down":
			return nil, errors.New("result store unavailable")
		}
		return nil, job.ErrNotFound
	}}
	resp, body := serve(h, "GET", "/admin/requests/"+rec.ID, "", auth)
	poll, _ := job.Marshal(rec) // what ingress answers a poll with
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" || strings.TrimSpace(body) != string(poll) {
		t.Fatalf("got %d %s\nwant the poll's %s", resp.StatusCode, body, poll)
	}
	var shape struct {
		AttemptLog []map[string]any `json:"attempt_log"`
	}
	if json.Unmarshal([]byte(body), &shape) != nil || len(shape.AttemptLog) != 2 || shape.AttemptLog[1]["error"] != "timeout" {
		t.Fatalf("attempt log: %s", body)
	}
	for _, c := range []struct {
		id     string
		status int
		typ    string
	}{{"nope", 404, "/problems/not-found"}, {"down", 503, "/problems/unavailable"}} {
		resp, body := serve(h, "GET", "/admin/requests/"+c.id, "", auth)
		if resp.StatusCode != c.status || resp.Header.Get("Content-Type") != "application/problem+json" || !strings.Contains(body, c.typ) {
			t.Fatalf("%s: %d %s", c.id, resp.StatusCode, body)
		}
		if c.status == 503 && resp.Header.Get("Retry-After") == "" {
			t.Fatal("503 without Retry-After")
		}
	}
	if resp, _ := serve(h, "GET", "/admin/requests/"+rec.ID, "", nil); resp.StatusCode != 401 {
		t.Fatalf("without the token: %d", resp.StatusCode)
	}
	if resp, _ := serve(h, "GET", "/admin/requests/"+rec.ID+"/response", "", auth); resp.StatusCode != 404 {
		t.Fatalf("a path below an id: %d", resp.StatusCode)
	}
}
