package job

import (
	"fmt"
	"strings"
	"testing"
)

func TestNewResponse(t *testing.T) {
	h := map[string][]string{"X-Multi": {"a", "b"}}
	r := NewResponse(200, h, []byte("héllo"), false)
	if r.Headers["X-Multi"] != "a, b" || r.BodyEncoding != "utf8" || r.Body != "héllo" {
		t.Fatalf("utf8 response: %+v", r)
	}
	r = NewResponse(500, nil, []byte{0xff, 0xfe}, false)
	if r.BodyEncoding != "base64" || string(r.BodyBytes()) != "\xff\xfe" {
		t.Fatalf("binary response: %+v", r)
	}
}

func TestNewResponseTruncated(t *testing.T) {
	h := map[string][]string{"Content-Length": {"2000000"}, "Etag": {`"x"`}, "Content-Type": {"text/plain"}}
	body := []byte(strings.Repeat("é", MaxStoredBody/2))   // exactly MaxStoredBody bytes
	r := NewResponse(200, h, body[:MaxStoredBody-1], true) // cut mid-character
	if !r.Truncated || r.BodyEncoding != "utf8" || len(r.Body) != MaxStoredBody-2 {
		t.Fatalf("cut body: truncated %v encoding %s len %d", r.Truncated, r.BodyEncoding, len(r.Body))
	}
	if _, ok := r.Headers["Content-Length"]; ok || r.Headers["Etag"] != "" || r.Headers["Content-Type"] != "text/plain" {
		t.Fatalf("headers of a cut body: %v", r.Headers)
	}
	whole := NewResponse(200, h, []byte("ok"), false)
	if whole.Truncated || whole.Headers["Content-Length"] == "" {
		t.Fatalf("whole body marked: %+v", whole)
	}
	escaped := NewResponse(200, nil, []byte(strings.Repeat("\x01", MaxStoredBody)), false)
	if !escaped.Truncated || len(escaped.Body)*6 > MaxEncodedBody {
		t.Fatalf("control characters: truncated %v, %d bytes (%d escaped)", escaped.Truncated, len(escaped.Body), len(escaped.Body)*6)
	}
	many := map[string][]string{}
	for i := range 2000 {
		many[fmt.Sprintf("X-H%d", i)] = []string{strings.Repeat("v", 100)}
	}
	if r := NewResponse(200, many, nil, false); !r.Truncated || len(r.Headers) >= 2000 {
		t.Fatalf("200 KB of headers kept whole: %d, truncated %v", len(r.Headers), r.Truncated)
	}
}
