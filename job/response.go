package job

import (
	"encoding/base64"
	"maps"
	"net/textproto"
	"slices"
	"sort"
	"strings"
	"unicode/utf8"
)

// Response is a backend's answer as clients see it when polling. Its JSON
// names are the result stores' stored form (results embeds it in a record).
type Response struct {
	Status       int               `json:"status"`
	Headers      map[string]string `json:"headers"`
	Body         string            `json:"body"`
	BodyEncoding string            `json:"body_encoding"`
	// Truncated reports a body (or headers) cut to the stored size.
	Truncated bool `json:"truncated,omitempty"`
}

// Stored response sizes. A response is kept whole up to MaxStoredBody bytes
// as received (SPEC §6); as stored, JSON-escaped or base64, its body takes
// at most MaxEncodedBody and its headers MaxStoredHeaders, so a status event
// always fits in a broker message (a body of control characters escapes to
// six times its size).
const (
	MaxStoredBody    = 1 << 20
	MaxEncodedBody   = 2 << 20
	MaxStoredHeaders = 64 << 10
)

// staleWhenCut are the headers that describe the whole body: wrong for a
// truncated one. Content-Encoding stays: the bytes kept are still in it (a
// cut gzip stream still inflates up to the cut).
var staleWhenCut = []string{"Content-Length", "Content-Range", "Content-Md5", "Digest", "Content-Digest", "Repr-Digest", "Etag"}

// NewResponse captures a backend answer: header values joined with ", ",
// the body as UTF-8 text, or base64 when it is not valid UTF-8. cut says
// the body was already cut at MaxStoredBody by its reader. A body whose
// stored form would exceed MaxEncodedBody is cut further. header is keyed
// by name as received (an http.Header fits); names are compared in
// canonical form.
func NewResponse(status int, header map[string][]string, body []byte, cut bool) *Response {
	r := &Response{Status: status, Headers: make(map[string]string, len(header)), Truncated: cut}
	if len(body) > MaxStoredBody {
		body, r.Truncated = body[:MaxStoredBody], true
	}
	if r.Truncated { // the cut may have split a character
		for i := 0; i < utf8.UTFMax && len(body) > 0 && !utf8.Valid(body); i++ {
			body = body[:len(body)-1]
		}
	}
	if utf8.Valid(body) {
		if n := fitEscaped(body, MaxEncodedBody); n < len(body) {
			body, r.Truncated = body[:n], true
		}
		r.Body, r.BodyEncoding = string(body), "utf8"
	} else {
		r.Body, r.BodyEncoding = base64.StdEncoding.EncodeToString(body), "base64"
	}
	names := make([]string, 0, len(header))
	for k := range header {
		names = append(names, k)
	}
	sort.Strings(names)
	size := 0
	for _, k := range names {
		if r.Truncated && slices.Contains(staleWhenCut, textproto.CanonicalMIMEHeaderKey(k)) {
			continue
		}
		v := strings.Join(header[k], ", ")
		if size += len(k) + len(v); size > MaxStoredHeaders {
			r.Truncated = true
			continue
		}
		r.Headers[k] = v
	}
	if r.Truncated {
		r.dropStale()
	}
	return r
}

// WithoutBody returns a copy of r with its body dropped and marked
// truncated: for an outcome the broker refuses as too large.
func (r *Response) WithoutBody() *Response {
	cp := *r
	cp.Headers = maps.Clone(r.Headers)
	cp.Body, cp.Truncated = "", true
	cp.dropStale()
	return &cp
}

func (r *Response) dropStale() {
	for k := range r.Headers {
		if slices.Contains(staleWhenCut, textproto.CanonicalMIMEHeaderKey(k)) {
			delete(r.Headers, k)
		}
	}
}

// fitEscaped returns how many bytes of the UTF-8 text b fit in limit bytes
// once JSON-escaped (as Marshal escapes), cut at a character boundary.
func fitEscaped(b []byte, limit int) int {
	n := 0
	for i := 0; i < len(b); {
		c, size := utf8.DecodeRune(b[i:])
		w := size
		switch {
		case c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t':
			w = 2
		case c < 0x20 || c == '\u2028' || c == '\u2029':
			w = 6
		}
		if n+w > limit {
			return i
		}
		n += w
		i += size
	}
	return len(b)
}

// BodyBytes returns the body as the backend sent it.
func (r *Response) BodyBytes() []byte {
	if r.BodyEncoding == "base64" {
		b, _ := base64.StdEncoding.DecodeString(r.Body)
		return b
	}
	return []byte(r.Body)
}
