package ingress

import (
	"strconv"

	"github.com/valyala/fasthttp"

	problems "github.com/sluice-gw/sluice/problem"
)

// problem writes a problem+json answer. retryAfter > 0 adds Retry-After.
func problem(ctx *fasthttp.RequestCtx, status int, detail string, retryAfter int) {
	ctx.Response.Reset()
	ctx.SetStatusCode(status)
	ctx.SetContentType(problems.ContentType)
	if retryAfter > 0 {
		ctx.Response.Header.Set("Retry-After", strconv.Itoa(retryAfter))
	}
	ctx.SetBody(problems.New(status, detail).JSON())
}
