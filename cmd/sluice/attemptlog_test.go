package main

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// TestAttemptLog: a poll's attempt_log has one entry per attempt — two
// 503s then a 200, each sent after the one before, each lasting at least
// what the backend took — and the admin port answers the same JSON for
// the id; an attempt with no answer has status 0 and its error's category.
func TestAttemptLog(t *testing.T) {
	integration(t)
	t.Parallel()
	const slow = 40 * time.Millisecond
	be := newBackend(t, func(h hit, n int) (int, map[string]string, string) {
		time.Sleep(slow)
		if n < 3 {
			return 503, nil, "busy"
		}
		return 200, nil, "done"
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + ln.Addr().String() + "/x"
	ln.Close()
	g := startGateway(t, `
routes: [{ name: r, path: /r, backend: b }, { name: down, path: /down, backend: down }]
backends:
`+backendCfg("b", be.URL, "    retry: { max_attempts: 5, initial_backoff: 50ms, max_backoff: 200ms }\n")+
		backendCfg("down", refused, "    retry: { max_attempts: 2, initial_backoff: 20ms, max_backoff: 50ms }\n"))

	a := g.submit("/r", "x", nil)
	r := g.await(a.ID, 20*time.Second)
	if r.Status != "succeeded" || r.Attempts != 3 {
		t.Fatalf("record: %+v", r)
	}
	checkLog(t, r, "503 503 200")
	hits := be.hitsFor(a.ID)
	prev, _ := time.Parse(time.RFC3339Nano, r.AcceptedAt)
	done, _ := time.Parse(time.RFC3339Nano, r.CompletedAt)
	for i, e := range r.AttemptLog {
		at, err := time.Parse(time.RFC3339Nano, e.At)
		if err != nil || !at.After(prev) || at.After(hits[i].At) || at.After(done) {
			t.Errorf("attempt %d at %s: want after %s (the previous attempt or the acceptance), before the backend saw it (%s) and before completion (%s)",
				i+1, e.At, prev.Format(time.RFC3339Nano), hits[i].At.UTC().Format(time.RFC3339Nano), r.CompletedAt)
		}
		if e.Attempt != i+1 || e.Error != "" || e.Replay != 0 || time.Duration(e.DurationMS)*time.Millisecond < slow {
			t.Errorf("attempt %d: %+v, want attempt %d, no error, at least %v", i+1, e, i+1, slow)
		}
		prev = at
	}

	// The operator's view: the poll's JSON, whichever client sent it.
	_, poll := do(t, "GET", g.base+"/v1/requests/"+a.ID, "", nil)
	resp, view := do(t, "GET", g.admin+"/admin/requests/"+a.ID, "", nil)
	if resp.StatusCode != 200 || strings.TrimSpace(string(view)) != string(poll) {
		t.Fatalf("admin view %d:\n%s\nwant the poll's\n%s", resp.StatusCode, view, poll)
	}
	resp, body := do(t, "GET", g.admin+"/admin/requests/AY9XqX1xRxYtR9m2c0Jg3kqJ", "", nil)
	if resp.StatusCode != 404 || resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("admin view of an unknown id: %d %s", resp.StatusCode, body)
	}

	// No answer: status 0 and the category, never the address; a replay's
	// attempts follow, marked with it.
	d := g.submit("/down", "x", nil)
	r = g.await(d.ID, 20*time.Second)
	if r.Status != "failed" || !r.DeadLettered {
		t.Fatalf("refused: %+v", r)
	}
	checkLog(t, r, "0:connection refused 0:connection refused")
	resp, body = do(t, "POST", g.admin+"/admin/dead-letters/replay", `{"backend":"down","ids":["`+d.ID+`"]}`, nil)
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != `{"replayed":1}` {
		t.Fatalf("replay: %d %s", resp.StatusCode, body)
	}
	r = g.await(d.ID, 20*time.Second)
	checkLog(t, r, "0:connection refused 0:connection refused 0:connection refused/1 0:connection refused/1")
	if r.AttemptLog[2].Attempt != 1 || r.Attempts != 2 {
		t.Fatalf("the replay's attempts count from 1 again: %+v", r)
	}
	_, poll = do(t, "GET", g.base+"/v1/requests/"+d.ID, "", nil)
	if strings.Contains(string(poll), ln.Addr().String()) || !strings.Contains(string(poll), `"replay":1`) {
		t.Fatalf("poll after the replay: %s", poll)
	}
}

// checkLog compares r's attempt log with want: each entry's status, then
// ":error" when it has one and "/replay" when it belongs to a replay.
func checkLog(t *testing.T, r record, want string) {
	t.Helper()
	var got []string
	for _, e := range r.AttemptLog {
		s := fmt.Sprint(e.Status)
		if e.Error != "" {
			s += ":" + e.Error
		}
		if e.Replay != 0 {
			s += fmt.Sprintf("/%d", e.Replay)
		}
		got = append(got, s)
	}
	if strings.Join(got, " ") != want {
		b, _ := json.Marshal(r.AttemptLog)
		t.Fatalf("%s: attempt_log %s, want %s", r.ID, b, want)
	}
}
