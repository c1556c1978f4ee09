package ingress

import (
	"context"
	"testing"

	"github.com/sluice-gw/sluice/broker"
)

// FuzzHandle throws arbitrary requests at the handler: it never panics and
// answers only statuses the contract names.
func FuzzHandle(f *testing.F) {
	f.Add("POST", "/r", "x", "Idempotency-Key", "k")
	f.Add("PUT", "/p/a/b?q=1", `{"a":1}`, "Connection", "X-Foo")
	f.Add("GET", "/v1/requests/abc?wait=3s", "", "", "")
	f.Add("GET", "/v1/requests/abc/response", "", "", "")
	f.Add("DELETE", "/r/../p/", "", "Content-Length", "-1")
	f.Add("POST", "/r", string(make([]byte, 100)), "X-Api-Key", "s")
	s, _ := testServer(f, "durable", func(context.Context, string, broker.Message) error { return nil })
	allowed := map[int]bool{200: true, 202: true, 400: true, 404: true, 405: true, 409: true, 413: true, 503: true}
	f.Fuzz(func(t *testing.T, method, uri, body, hk, hv string) {
		if method == "" {
			method = "GET"
		}
		ctx := call(s, method, uri, body, map[string]string{hk: hv})
		if st := ctx.Response.StatusCode(); !allowed[st] {
			t.Fatalf("%s %q answered %d", method, uri, st)
		}
	})
}
