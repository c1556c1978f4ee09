package config

import (
	"fmt"
	"strings"
	"testing"
)

// TestTracing: tracing is off when absent; present, it needs an http(s)
// collector URL and a sample between 0 and 1, which defaults to 1 and
// keeps an explicit 0.
func TestTracing(t *testing.T) {
	base := "routes: [{ name: r, path: /r, backend: b }]\nbackends: [{ name: b, urls: [\"http://127.0.0.1:1/\"] }]\n%s"
	for _, tc := range []struct {
		name, cfg string
		sample    float64 // want, when valid; -1: tracing off
		refused   string
	}{
		{name: "absent", sample: -1},
		{name: "defaults", cfg: `tracing: { otlp_endpoint: "http://127.0.0.1:4318" }`, sample: 1},
		{name: "sample 0 kept", cfg: `tracing: { otlp_endpoint: "https://otel.example/otlp", sample: 0 }`, sample: 0},
		{name: "sample 0.25", cfg: `tracing: { otlp_endpoint: "http://collector:4318/v1/traces", sample: 0.25 }`, sample: 0.25},
		{name: "sample 1 as an integer", cfg: `tracing: { otlp_endpoint: "http://[::1]:4318/", sample: 1 }`, sample: 1},
		{name: "empty section", cfg: "tracing:\n", refused: "tracing.otlp_endpoint: is required"},
		{name: "no endpoint", cfg: "tracing: { sample: 1 }", refused: "tracing.otlp_endpoint: is required"},
		{name: "credentials in the URL", cfg: `tracing: { otlp_endpoint: "http://user:pw@127.0.0.1:4318" }`, refused: "tracing.otlp_endpoint: must not carry credentials"},
		{name: "port out of range", cfg: `tracing: { otlp_endpoint: "http://127.0.0.1:99999" }`, refused: "tracing.otlp_endpoint: has no valid port"},
		{name: "grpc scheme", cfg: `tracing: { otlp_endpoint: "grpc://127.0.0.1:4317" }`, refused: "tracing.otlp_endpoint: must be an http:// or https:// url"},
		{name: "host only", cfg: `tracing: { otlp_endpoint: "127.0.0.1:4318" }`, refused: "tracing.otlp_endpoint: must be an http:// or https:// url"},
		{name: "no host", cfg: `tracing: { otlp_endpoint: "http:///v1/traces" }`, refused: "tracing.otlp_endpoint: must be an http:// or https:// url"},
		{name: "query", cfg: `tracing: { otlp_endpoint: "http://127.0.0.1:4318/?x=1" }`, refused: "without a query or fragment"},
		{name: "empty port", cfg: `tracing: { otlp_endpoint: "http://127.0.0.1:/" }`, refused: "tracing.otlp_endpoint: must be scheme://host:port"},
		{name: "sample negative", cfg: `tracing: { otlp_endpoint: "http://127.0.0.1:4318", sample: -0.1 }`, refused: "tracing.sample: must be 0 to 1"},
		{name: "sample above 1", cfg: `tracing: { otlp_endpoint: "http://127.0.0.1:4318", sample: 1.01 }`, refused: "tracing.sample: must be 0 to 1"},
		{name: "sample NaN", cfg: `tracing: { otlp_endpoint: "http://127.0.0.1:4318", sample: .nan }`, refused: "tracing.sample: must be 0 to 1"},
		{name: "sample a percentage", cfg: `tracing: { otlp_endpoint: "http://127.0.0.1:4318", sample: 10% }`, refused: "tracing.sample: must be a number"},
		{name: "tracing a boolean", cfg: "tracing: true", refused: "tracing: must be a mapping"},
		{name: "unknown key", cfg: `tracing: { otlp_endpoint: "http://127.0.0.1:4318", headers: { a: b } }`, refused: "tracing.headers: unknown key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(fmt.Sprintf(base, tc.cfg)), t.TempDir())
			switch {
			case tc.refused != "":
				if err == nil || !strings.Contains(err.Error(), tc.refused) {
					t.Fatalf("got %v, want %q", err, tc.refused)
				}
			case err != nil:
				t.Fatalf("refused: %v", err)
			case tc.sample < 0 && c.Tracing != nil:
				t.Fatalf("tracing on without the section: %+v", c.Tracing)
			case tc.sample >= 0 && (c.Tracing == nil || c.Tracing.Sample == nil || *c.Tracing.Sample != tc.sample):
				t.Fatalf("tracing %+v, want sample %g", c.Tracing, tc.sample)
			}
		})
	}
}
