package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestBadInput drives every error of SPEC §3 through a running gateway: each
// answer is problem+json with type, title, status and detail, and leaks no
// internals.
func TestBadInput(t *testing.T) {
	integration(t)
	t.Parallel()
	be := newBackend(t, nil)
	g := startGateway(t, `
routes:
  - { name: logs, path: /v1/logs, backend: b, max_body: 1KiB, schema: `+schemaPath(t)+` }
  - { name: jobs, path: /v1/jobs/, backend: b, methods: [PUT] }
backends:
`+backendCfg("b", be.URL, ""))
	resp, body := do(t, "PUT", g.base+"/v1/jobs/x", "", nil)
	var pending accepted
	if err := json.Unmarshal(body, &pending); err != nil || resp.StatusCode != 202 {
		t.Fatalf("valid PUT: %d %s", resp.StatusCode, body)
	}

	cases := []struct {
		name, method, path, body string
		want                     int
		allow                    string
	}{
		{"no route", "POST", "/nope", "{}", 404, ""},
		{"no route under a prefix's parent", "PUT", "/v1/jobs", "{}", 404, ""},
		{"wrong method", "GET", "/v1/logs", "", 405, "POST"},
		{"wrong method on prefix", "POST", "/v1/jobs/a", "", 405, "PUT"},
		{"body over max_body", "POST", "/v1/logs", `{"records":[{"level":"info","msg":"` + strings.Repeat("x", 2000) + `"}]}`, 413, ""},
		{"malformed JSON", "POST", "/v1/logs", `{"records":`, 400, ""},
		{"schema mismatch", "POST", "/v1/logs", `{"records":[{"level":"loud","msg":"x"}]}`, 400, ""},
		{"empty body vs schema", "POST", "/v1/logs", ``, 400, ""},
		{"unknown id", "GET", "/v1/requests/AAAAAAAAAAAAAAAAAAAAAA", "", 404, ""},
		{"unknown id response", "GET", "/v1/requests/AAAAAAAAAAAAAAAAAAAAAA/response", "", 404, ""},
		{"bad wait", "GET", "/v1/requests/" + pending.ID + "?wait=forever", "", 400, ""},
		{"poll with POST", "POST", "/v1/requests/" + pending.ID, "", 405, "GET, HEAD"},
		{"poll sub-resource", "GET", "/v1/requests/" + pending.ID + "/other", "", 404, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := do(t, c.method, g.base+c.path, c.body, map[string]string{"Content-Type": "application/json"})
			if resp.StatusCode != c.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.want, body)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
				t.Fatalf("Content-Type %q", ct)
			}
			var p struct {
				Type   string `json:"type"`
				Title  string `json:"title"`
				Status int    `json:"status"`
				Detail string `json:"detail"`
			}
			if err := json.Unmarshal(body, &p); err != nil {
				t.Fatalf("body %s: %v", body, err)
			}
			if p.Type == "" || p.Title == "" || p.Status != c.want || p.Detail == "" {
				t.Fatalf("problem fields missing: %s", body)
			}
			for _, leak := range []string{"goroutine", ".go:", "nats", "127.0.0.1", "file://"} {
				if strings.Contains(string(body), leak) {
					t.Fatalf("problem leaks %q: %s", leak, body)
				}
			}
			if c.allow != "" && resp.Header.Get("Allow") != c.allow {
				t.Fatalf("Allow %q, want %q", resp.Header.Get("Allow"), c.allow)
			}
		})
	}
	// Nothing rejected reached the backend; the one valid submit did.
	g.await(pending.ID, 20*time.Second)
	if n := be.count(); n != 1 {
		t.Fatalf("backend got %d requests, want only the valid one", n)
	}
}

func schemaPath(t *testing.T) string {
	t.Helper()
	p, err := filepathAbs("../../schemas/log.json")
	if err != nil {
		t.Fatal(err)
	}
	return p
}
