package ingress

import (
	"bytes"
	"compress/flate"
	"errors"
	"io"
	"net/textproto"
	"sort"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zlib"
	"github.com/valyala/fasthttp"

	"github.com/sluice-gw/sluice/config"
)

// transform is a route's set_headers and remove_headers, compiled.
type transform struct {
	remove []string    // canonical names: removed, and replaced by set
	set    []setHeader // in name order
}

type setHeader struct {
	name string
	tmpl config.Template
}

func newTransform(r config.Route) (*transform, error) {
	if len(r.SetHeaders) == 0 && len(r.RemoveHeaders) == 0 {
		return nil, nil
	}
	t := &transform{}
	for _, n := range r.RemoveHeaders {
		// Folded as a client's names are (removes): X_Secret here
		// removes X-Secret and X_Secret alike.
		t.remove = append(t.remove, textproto.CanonicalMIMEHeaderKey(strings.ReplaceAll(n, "_", "-")))
	}
	for n, v := range r.SetHeaders {
		tmpl, err := config.ParseTemplate(v) // config checked it; this cannot fail
		if err != nil {
			return nil, err
		}
		c := textproto.CanonicalMIMEHeaderKey(n)
		t.remove = append(t.remove, c)
		t.set = append(t.set, setHeader{name: c, tmpl: tmpl})
	}
	sort.Slice(t.set, func(i, j int) bool { return t.set[i].name < t.set[j].name })
	return t, nil
}

// apply removes and sets the route's headers on what the backend gets.
// A value a client name or id would make invalid cannot happen: client
// names are visible ASCII (auth), ids URL-safe.
func (t *transform) apply(h [][2]string, client, route, id string) [][2]string {
	out := h[:0]
	for _, kv := range h {
		if !t.removes(kv[0]) {
			out = append(out, kv)
		}
	}
	for _, s := range t.set {
		out = append(out, [2]string{s.name, s.tmpl.Expand(client, route, id)})
	}
	return out
}

// removes reports whether the header a client sent as name is one of
// t.remove. It compares in place, allocating nothing: case-insensitive,
// and with '_' read as '-', since X_Tenant reaches CGI-style backends as
// HTTP_X_TENANT, the same as X-Tenant, so it is removed or replaced with
// it.
func (t *transform) removes(name string) bool {
	for _, c := range t.remove {
		if sameHeader(name, c) {
			return true
		}
	}
	return false
}

func sameHeader(name, canon string) bool {
	if len(name) != len(canon) {
		return false
	}
	for i := 0; i < len(name); i++ {
		a, b := name[i], canon[i]
		if a == '_' {
			a = '-'
		}
		if a != b && lowerASCII(a) != lowerASCII(b) {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + ('a' - 'A')
	}
	return c
}

// Content codings.
var (
	errCoding  = errors.New("unsupported content coding")
	errTooBig  = errors.New("inflated body is larger than max_body")
	errCorrupt = errors.New("body is not valid for its Content-Encoding")
)

// contentEncoding is the request's Content-Encoding, every header line
// joined into one list: a second line must not hide a coding from the
// check.
func contentEncoding(h *fasthttp.RequestHeader) []byte {
	all := h.PeekAll("Content-Encoding")
	switch len(all) {
	case 0:
		return nil
	case 1:
		return all[0]
	}
	return bytes.Join(all, []byte(", "))
}

// encoded reports whether a Content-Encoding value says the body is
// compressed: anything but absent or identity. A list of codings
// ("gzip, identity") counts as encoded, and inflate refuses it.
func encoded(enc []byte) bool {
	return len(enc) > 0 && !bytes.EqualFold(bytes.TrimSpace(enc), []byte("identity"))
}

// inflate decompresses a gzip or deflate body, streaming, reading at most
// limit bytes of output: a bomb is refused once it passes the limit,
// without inflating the rest.
func inflate(enc, body []byte, limit int64) ([]byte, error) {
	var r io.Reader
	switch strings.ToLower(strings.TrimSpace(string(enc))) {
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			return nil, errCorrupt
		}
		defer zr.Close()
		r = zr
	case "deflate": // RFC 9110: zlib format; some clients send raw deflate
		zr, err := zlib.NewReader(bytes.NewReader(body))
		if err != nil {
			fr := flate.NewReader(bytes.NewReader(body))
			defer fr.Close()
			r = fr
		} else {
			defer zr.Close()
			r = zr
		}
	default:
		return nil, errCoding
	}
	out := bytes.NewBuffer(make([]byte, 0, min(limit+1, int64(4*len(body)+512))))
	n, err := io.Copy(out, io.LimitReader(r, limit+1))
	switch {
	case n > limit:
		return nil, errTooBig
	case err != nil:
		return nil, errCorrupt
	}
	return out.Bytes(), nil
}
