package ingress

import (
	"github.com/valyala/fasthttp"
)

// authenticate names the request's client, or answers 401 (503 while no
// key to check a JWT can be had) and reports false. Without auth every
// request is client "".
func (s *Server) authenticate(ctx *fasthttp.RequestCtx) (string, bool) {
	return "", true
}

// admitRate spends one of the client's rate_limit on r, or answers 429.
func (s *Server) admitRate(ctx *fasthttp.RequestCtx, r *route, client string) bool {
	return true
}
