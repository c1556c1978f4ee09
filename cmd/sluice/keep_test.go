package main

import (
	"strings"
	"testing"
	"time"
)

// TestKeepResponseFailures: with results.keep_response: failures a
// succeeded request polls without its response and /response answers
// 410; a failed one keeps its response and replays it. A route's ttl is
// taken (the store opens with it).
func TestKeepResponseFailures(t *testing.T) {
	integration(t)
	t.Parallel()
	be := newBackend(t, func(h hit, n int) (int, map[string]string, string) {
		if strings.HasSuffix(h.Path, "/bad") {
			return 400, map[string]string{"Content-Type": "text/plain"}, "no"
		}
		return 200, map[string]string{"Content-Type": "text/plain"}, "fine"
	})
	g := startGateway(t, `
results: { keep_response: failures }
routes:
  - { name: ok, path: /ok, backend: store, ttl: 10m }
  - { name: bad, path: /bad, backend: bad }
backends:
`+backendCfg("store", be.URL+"/good", "")+backendCfg("bad", be.URL+"/bad", ""))
	ok, bad := g.submit("/ok", "x", nil), g.submit("/bad", "y", nil)
	if r := g.await(ok.ID, 20*time.Second); r.Status != "succeeded" || r.Response != nil {
		t.Fatalf("succeeded record: %+v, response %+v; want none kept", r, r.Response)
	}
	resp, body := do(t, "GET", g.base+"/v1/requests/"+ok.ID+"/response", "", nil)
	if resp.StatusCode != 410 {
		t.Fatalf("/response of a succeeded request without its response: %d %s, want 410", resp.StatusCode, body)
	}
	if r := g.await(bad.ID, 20*time.Second); r.Status != "failed" || r.Response == nil || r.Response.Body != "no" {
		t.Fatalf("failed record: %+v, response %+v; want it kept", r, r.Response)
	}
	resp, body = do(t, "GET", g.base+"/v1/requests/"+bad.ID+"/response", "", nil)
	if resp.StatusCode != 400 || string(body) != "no" {
		t.Fatalf("/response of a failed request: %d %s", resp.StatusCode, body)
	}
}
