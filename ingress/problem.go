package ingress

import (
	"strconv"

	"github.com/valyala/fasthttp"

	"github.com/sluice-gw/sluice/job"
)

// Problem is an RFC 9457 problem detail.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

// problemTypes is the one table of error kinds: slug by status.
var problemTypes = map[int]string{
	400: "bad-request",
	401: "unauthorized",
	403: "forbidden",
	404: "not-found",
	405: "method-not-allowed",
	409: "not-finished",
	413: "body-too-large",
	429: "rate-limited",
	502: "no-backend-response",
	503: "unavailable",
}

// problem writes a problem+json answer. retryAfter > 0 adds Retry-After.
func problem(ctx *fasthttp.RequestCtx, status int, detail string, retryAfter int) {
	slug := problemTypes[status]
	if slug == "" {
		slug = "error"
	}
	body, _ := job.Marshal(Problem{
		Type: "/problems/" + slug, Title: fasthttp.StatusMessage(status), Status: status, Detail: detail,
	})
	ctx.Response.Reset()
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/problem+json")
	if retryAfter > 0 {
		ctx.Response.Header.Set("Retry-After", strconv.Itoa(retryAfter))
	}
	ctx.SetBody(body)
}
