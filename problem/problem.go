// Package problem is the one error shape of both of sluice's ports: RFC
// 9457 problem details, typed by a slug per status ("/problems/not-found"),
// encoded without HTML escaping so details read as written.
package problem

import (
	"net/http"

	"github.com/sluice-gw/sluice/job"
)

// ContentType is the media type of a problem.
const ContentType = "application/problem+json"

// Details is an RFC 9457 problem.
type Details struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

// slugs is the one table of error kinds: slug by status.
var slugs = map[int]string{
	400: "bad-request",
	401: "unauthorized",
	403: "forbidden",
	404: "not-found",
	405: "method-not-allowed",
	409: "conflict",
	413: "body-too-large",
	415: "unsupported-encoding",
	429: "rate-limited",
	421: "misdirected",
	431: "headers-too-large",
	500: "internal",
	502: "no-backend-response",
	503: "unavailable",
}

// New is the problem of status with detail.
func New(status int, detail string) Details {
	slug := slugs[status]
	if slug == "" {
		slug = "error"
	}
	return Details{Type: "/problems/" + slug, Title: http.StatusText(status), Status: status, Detail: detail}
}

// JSON encodes d.
func (d Details) JSON() []byte {
	b, _ := job.Marshal(d) // plain struct always encodes
	return b
}

// Write writes the problem of status with detail to w (net/http).
func Write(w http.ResponseWriter, status int, detail string) {
	w.Header().Set("Content-Type", ContentType)
	w.WriteHeader(status)
	_, _ = w.Write(New(status, detail).JSON())
}
