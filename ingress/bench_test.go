package ingress

import (
	"context"
	"testing"

	"github.com/rs/zerolog"
	"github.com/sluice-gw/sluice/auth"
	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/config"
)

// BenchmarkSubmit is the submit path without a broker: routing, checks, id,
// encoding, record — what sluice adds on top of fasthttp and the broker.
func BenchmarkSubmit(b *testing.B) {
	s, _ := testServer(b, "durable", func(context.Context, string, broker.Message) error { return nil })
	body := string(make([]byte, 60))
	b.ReportAllocs()
	for b.Loop() {
		ctx := call(s, "POST", "/r?x=1", body, map[string]string{"Content-Type": "application/json"})
		if ctx.Response.StatusCode() != 202 {
			b.Fatal(ctx.Response.StatusCode())
		}
	}
}

// BenchmarkSubmitPolicies is BenchmarkSubmit with API-key auth, a client
// rate limit and CORS on: what the policies add per request.
func BenchmarkSubmitPolicies(b *testing.B) {
	for _, on := range []bool{false, true} {
		name, top, route, hdr := "off", "", "", map[string]string{"Content-Type": "application/json"}
		if on {
			name = "on"
			top = "auth: { api_keys: [ { client: bench, key: bench-key-0123456789abcdef } ] }\n"
			route = ", rate_limit: { rate: 10000000, burst: 10000000 }, cors: { origins: [\"https://app.example\"] }"
			hdr = map[string]string{"Content-Type": "application/json", "X-API-Key": "bench-key-0123456789abcdef", "Origin": "https://app.example"}
		}
		b.Run(name, func(b *testing.B) {
			cfg, err := config.Parse([]byte(top+"routes: [{ name: r, path: /r, backend: b"+route+" }]\nbackends: [{ name: b, urls: [\"http://127.0.0.1:1/\"] }]\n"), b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			s, err := New(cfg, &fakePublisher{PublishFn: func(context.Context, string, broker.Message) error { return nil }}, newFakeStore(), &fakeBacklog{}, zerolog.Nop())
			if err != nil {
				b.Fatal(err)
			}
			if on {
				a, err := auth.New(context.Background(), cfg.Auth, cfg.Dir, zerolog.Nop())
				if err != nil {
					b.Fatal(err)
				}
				s.SetAuth(a)
			}
			body := string(make([]byte, 60))
			b.ReportAllocs()
			for b.Loop() {
				ctx := call(s, "POST", "/r", body, hdr)
				if ctx.Response.StatusCode() != 202 {
					b.Fatal(ctx.Response.StatusCode())
				}
			}
		})
	}
}

// BenchmarkSubmitRateByAddress is BenchmarkSubmit with a rate limit and no
// auth: the budget is kept per client address.
func BenchmarkSubmitRateByAddress(b *testing.B) {
	cfg, err := config.Parse([]byte("routes: [{ name: r, path: /r, backend: b, rate_limit: { rate: 10000000, burst: 10000000 } }]\n"+
		"backends: [{ name: b, urls: [\"http://127.0.0.1:1/\"] }]\n"), b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	s, err := New(cfg, &fakePublisher{PublishFn: func(context.Context, string, broker.Message) error { return nil }}, newFakeStore(), &fakeBacklog{}, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	body := string(make([]byte, 60))
	hdr := map[string]string{"Content-Type": "application/json"}
	b.ReportAllocs()
	for b.Loop() {
		ctx := call(s, "POST", "/r", body, hdr)
		if ctx.Response.StatusCode() != 202 {
			b.Fatal(ctx.Response.StatusCode())
		}
	}
}

// BenchmarkSubmitTransform is BenchmarkSubmit on a route with set_headers
// and remove_headers, and a request with a few headers, one of them
// spelled with an underscore.
func BenchmarkSubmitTransform(b *testing.B) {
	cfg, err := config.Parse([]byte("routes: [{ name: r, path: /r, backend: b, set_headers: { X-Tenant: \"${client}\" }, remove_headers: [Cookie] }]\n"+
		"backends: [{ name: b, urls: [\"http://127.0.0.1:1/\"] }]\n"), b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	s, err := New(cfg, &fakePublisher{PublishFn: func(context.Context, string, broker.Message) error { return nil }}, newFakeStore(), &fakeBacklog{}, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	body := string(make([]byte, 60))
	hdr := map[string]string{"Content-Type": "application/json", "Cookie": "a=b", "X_Tenant": "spoof",
		"User-Agent": "bench", "Accept": "*/*", "X-Trace-Me": "1"}
	b.ReportAllocs()
	for b.Loop() {
		ctx := call(s, "POST", "/r", body, hdr)
		if ctx.Response.StatusCode() != 202 {
			b.Fatal(ctx.Response.StatusCode())
		}
	}
}
