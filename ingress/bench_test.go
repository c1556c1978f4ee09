package ingress

import (
	"context"
	"testing"

	"github.com/sluice-gw/sluice/broker"
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
