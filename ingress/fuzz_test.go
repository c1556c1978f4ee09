package ingress

import (
	"context"
	"testing"

	"github.com/rs/zerolog"
	"github.com/sluice-gw/sluice/auth"
	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/config"
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

// FuzzHandlePolicies is FuzzHandle on routes with every policy on: API
// keys and HS256 JWTs, a client list, a rate limit, CORS, header
// transforms and decompress. Still no panic, and only statuses the
// contract names (never a 500).
func FuzzHandlePolicies(f *testing.F) {
	f.Add("POST", "/logs", "x", "X-API-Key", "key-a-0123456789", "gzip")
	f.Add("OPTIONS", "/logs", "", "Origin", "https://app.example", "")
	f.Add("POST", "/logs", "\x1f\x8b\x08\x00", "Authorization", "Bearer a.b.c", "gzip")
	f.Add("POST", "/only-b", "{}", "Authorization", "Bearer key-a-0123456789", "deflate")
	f.Add("GET", "/v1/requests/abc", "", "Authorization", "bearer eyJhbGciOiJub25lIn0.e30.", "")
	cfg, err := config.Parse([]byte(`
auth:
  api_keys: [ { client: team-a, key: key-a-0123456789 }, { client: team-b, key: key-b-0123456789 } ]
  jwt: { hs256_secret: an-hs256-secret-of-32-bytes-or-more!, issuer: i, audience: a }
routes:
  - name: logs
    path: /logs
    backend: b
    methods: [POST, PUT]
    max_body: 4KiB
    rate_limit: { rate: 1000000, burst: 1000000 }
    cors: { origins: ["https://app.example"] }
    set_headers: { X-Tenant: "${client}", X-Id: "${request_id}" }
    remove_headers: [Cookie]
    decompress: true
    ack: { status: 201 }
  - { name: only-b, path: /only-b, backend: b, clients: [team-b] }
backends: [{ name: b, urls: ["http://127.0.0.1:1/"] }]
`), f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	s, err := New(cfg, &fakePublisher{PublishFn: func(context.Context, string, broker.Message) error { return nil }},
		newFakeStore(), &fakeBacklog{}, zerolog.Nop())
	if err != nil {
		f.Fatal(err)
	}
	a, err := auth.New(context.Background(), cfg.Auth, cfg.Dir, zerolog.Nop())
	if err != nil {
		f.Fatal(err)
	}
	s.SetAuth(a)
	allowed := map[int]bool{200: true, 201: true, 202: true, 204: true, 400: true, 401: true, 403: true, 404: true,
		405: true, 409: true, 413: true, 415: true, 429: true, 503: true}
	f.Fuzz(func(t *testing.T, method, uri, body, hk, hv, enc string) {
		if method == "" {
			method = "GET"
		}
		ctx := call(s, method, uri, body, map[string]string{hk: hv, "Content-Encoding": enc})
		if st := ctx.Response.StatusCode(); !allowed[st] {
			t.Fatalf("%s %q answered %d: %s", method, uri, st, ctx.Response.Body())
		}
	})
}
