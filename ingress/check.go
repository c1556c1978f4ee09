package ingress

import (
	"bytes"
	"net/textproto"
	"strconv"
	"strings"

	"github.com/valyala/fasthttp"
	"golang.org/x/net/http/httpguts"
)

// forwarded returns the client's headers a backend gets (forwardable),
// in order, or why one of them cannot be carried: a name that is not an
// RFC 9110 token, or a value with control characters. Refusing it here
// keeps it from ever failing an attempt (and counting against the
// backend's breaker). One pass over the headers does both.
// With inflated, the body is sent decompressed, so Content-Encoding
// stays behind too.
func forwarded(h *fasthttp.RequestHeader, inflated bool) ([][2]string, string) {
	conn := string(h.Peek("Connection"))
	var out [][2]string
	for k, v := range h.All() {
		name, value := string(k), string(v)
		if !httpguts.ValidHeaderFieldName(name) {
			return nil, "header name " + strconv.Quote(name) + " is not a valid token (RFC 9110)"
		}
		if !httpguts.ValidHeaderFieldValue(value) {
			return nil, "header " + strconv.Quote(name) + " has a control character in its value"
		}
		if forwardable(name, conn) && !(inflated && strings.EqualFold(name, "Content-Encoding")) {
			out = append(out, [2]string{name, value})
		}
	}
	return out, ""
}

// hopByHop are the headers a proxy never forwards (RFC 9110 §7.6.1), plus
// the ones the transport sets itself.
var hopByHop = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true, "Proxy-Authorization": true,
	"Proxy-Connection": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
	"Host": true, "Content-Length": true,
}

// forwardable reports whether a client header travels to the backend: not
// hop-by-hop, not named by Connection, not the client's credentials. It is
// decided once, at intake, so the request waits in its topic with only the
// headers its backend gets; workers send them as they are.
func forwardable(name string, connection string) bool {
	c := textproto.CanonicalMIMEHeaderKey(name)
	if hopByHop[c] || c == "Authorization" || c == "X-Api-Key" {
		return false
	}
	for rest := connection; rest != ""; { // no Split: this runs for every header
		var f string
		f, rest, _ = strings.Cut(rest, ",")
		if strings.EqualFold(strings.TrimSpace(f), name) {
			return false
		}
	}
	return true
}

// badPath explains why the rest of a prefix route's path must not reach the
// backend: dot segments (also with ";" parameters, which some servers
// strip: "..;"), backslashes, control characters, or an encoded slash or
// backslash that would change the path's segments. rest is the decoded,
// normalized path after the prefix; raw is the request's path as sent.
// Empty: all good.
func badPath(rest string, raw []byte) string {
	for i := 0; i < len(rest); i++ {
		switch c := rest[i]; {
		case c < 0x20 || c == 0x7f:
			return "has a control character"
		case c == '\\':
			return "has a backslash"
		}
	}
	for _, seg := range strings.Split(rest, "/") {
		name, _, _ := strings.Cut(seg, ";")
		if name == "." || name == ".." {
			return "has a dot segment (" + strconv.Quote(seg) + ")"
		}
	}
	lower := bytes.ToLower(raw)
	for _, enc := range []string{"%2f", "%5c", "%00"} {
		if bytes.Contains(lower, []byte(enc)) {
			return "has an encoded " + map[string]string{"%2f": "slash", "%5c": "backslash", "%00": "NUL"}[enc]
		}
	}
	return ""
}

// badQuery explains why a raw query string cannot be forwarded (control
// characters or spaces). Empty: all good.
func badQuery(q []byte) string {
	for _, c := range q {
		if c <= 0x20 || c == 0x7f {
			return "has a space or control character; percent-encode it"
		}
	}
	return ""
}
