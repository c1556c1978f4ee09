package ingress

import (
	"bytes"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-gw/sluice/config"
)

// corsPolicy is a route's cors, compiled: sluice answers a preflight
// itself (it is never enqueued) and marks every actual answer, 202s,
// errors and polls alike, for the origins it lists.
type corsPolicy struct {
	any         bool            // "*"
	origins     map[string]bool // exact origins, as browsers send them
	methods     string          // Access-Control-Allow-Methods
	headers     string          // Access-Control-Allow-Headers
	maxAge      string          // Access-Control-Max-Age, whole seconds
	credentials bool
}

// exposed are the headers a browser app may read from sluice's answers.
const exposed = "Location, X-Request-Id, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset"

func newCORS(c *config.CORS, methods []string) *corsPolicy {
	p := &corsPolicy{origins: map[string]bool{}, credentials: c.Credentials,
		maxAge: strconv.Itoa(int(c.MaxAge.D().Seconds()))}
	for _, o := range c.Origins {
		if o == "*" {
			p.any = true
			continue
		}
		p.origins[strings.TrimSuffix(strings.ToLower(o), "/")] = true
	}
	p.methods = strings.Join(methods, ", ")
	p.headers = strings.Join(c.Headers, ", ")
	return p
}

// pollCORS lets a poll answer every origin some route's cors lets in:
// an app that posts to a route polls its outcome next. Nil when no route
// has cors.
func pollCORS(routes []*route) *corsPolicy {
	var u *corsPolicy
	var headers []string
	var maxAge time.Duration // the longest of the routes'
	for _, r := range routes {
		c := r.cors
		if c == nil {
			continue
		}
		if u == nil {
			u = &corsPolicy{origins: map[string]bool{}, methods: "GET, HEAD"}
		}
		maxAge = max(maxAge, r.cfg.CORS.MaxAge.D())
		u.any = u.any || c.any
		u.credentials = u.credentials || c.credentials
		for o := range c.origins {
			u.origins[o] = true
		}
		for _, h := range r.cfg.CORS.Headers {
			if !slices.ContainsFunc(headers, func(x string) bool { return strings.EqualFold(x, h) }) {
				headers = append(headers, h)
			}
		}
	}
	if u != nil {
		u.headers = strings.Join(headers, ", ")
		u.maxAge = strconv.Itoa(int(maxAge.Seconds()))
		// "*" with credentials is refused by browsers: answer each origin.
		if u.any && u.credentials {
			u.credentials = false
		}
	}
	return u
}

// allowed reports whether origin may read the answer.
func (p *corsPolicy) allowed(origin []byte) bool {
	if len(origin) == 0 {
		return false
	}
	if p.any {
		return true
	}
	if p.origins[string(origin)] { // no allocation for the lookup
		return true
	}
	return p.origins[strings.ToLower(string(origin))]
}

// isPreflight: an OPTIONS with Origin and Access-Control-Request-Method.
func isPreflight(ctx *fasthttp.RequestCtx) bool {
	return bytes.Equal(ctx.Method(), []byte("OPTIONS")) &&
		len(ctx.Request.Header.Peek("Origin")) > 0 &&
		len(ctx.Request.Header.Peek("Access-Control-Request-Method")) > 0
}

// preflight answers 204; an origin not listed gets no
// Access-Control-Allow-Origin, so the browser stops there.
func (p *corsPolicy) preflight(ctx *fasthttp.RequestCtx) {
	origin := ctx.Request.Header.Peek("Origin")
	ctx.SetStatusCode(fasthttp.StatusNoContent)
	h := &ctx.Response.Header
	h.Set("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
	if !p.allowed(origin) {
		return
	}
	p.allowOrigin(h, origin)
	h.Set("Access-Control-Allow-Methods", p.methods)
	if p.headers != "" {
		h.Set("Access-Control-Allow-Headers", p.headers)
	}
	h.Set("Access-Control-Max-Age", p.maxAge)
}

// decorate marks an actual answer for the request's origin.
func (p *corsPolicy) decorate(ctx *fasthttp.RequestCtx) {
	origin := ctx.Request.Header.Peek("Origin")
	h := &ctx.Response.Header
	if !p.any || p.credentials {
		h.Set("Vary", "Origin")
	}
	if !p.allowed(origin) {
		return
	}
	p.allowOrigin(h, origin)
	h.Set("Access-Control-Expose-Headers", exposed)
}

func (p *corsPolicy) allowOrigin(h *fasthttp.ResponseHeader, origin []byte) {
	if p.any && !p.credentials {
		h.Set("Access-Control-Allow-Origin", "*")
		return
	}
	h.SetBytesV("Access-Control-Allow-Origin", origin)
	if p.credentials {
		h.Set("Access-Control-Allow-Credentials", "true")
	}
}
