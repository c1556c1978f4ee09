package config

import "strings"

// validateTracing checks the tracing section: an http(s) collector URL and
// a share of traces between 0 and 1.
func (c *Config) validateTracing(bad func(key, format string, args ...any)) {
	t := c.Tracing
	if t == nil {
		return
	}
	switch u := httpURL(t.OTLPEndpoint); {
	case t.OTLPEndpoint == "":
		bad("tracing.otlp_endpoint", "is required: the collector's OTLP/HTTP URL, such as \"http://127.0.0.1:4318\" (leave tracing out to run without it)")
	case u == nil || u.Opaque != "":
		bad("tracing.otlp_endpoint", "must be an http:// or https:// url, such as \"http://127.0.0.1:4318\", got %q", t.OTLPEndpoint)
	case u.User != nil:
		bad("tracing.otlp_endpoint", "must not carry credentials (they would be logged); set OTEL_EXPORTER_OTLP_HEADERS, e.g. \"Authorization=Basic ...\"")
	case u.RawQuery != "" || u.Fragment != "" || strings.HasSuffix(u.Host, ":"):
		bad("tracing.otlp_endpoint", "must be scheme://host:port[/path], without a query or fragment, got %q", t.OTLPEndpoint)
	case u.Port() != "" && !validPort(u.Port()):
		bad("tracing.otlp_endpoint", "has no valid port (1-65535), got %q", t.OTLPEndpoint)
	}
	if s := t.Sample; s != nil && !(*s >= 0 && *s <= 1) {
		bad("tracing.sample", "must be 0 to 1 (the share of new traces recorded), got %g", *s)
	}
}
