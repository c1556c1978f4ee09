package ingress

import (
	"context"
	"errors"
	"net/netip"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-gw/sluice/auth"
	"github.com/sluice-gw/sluice/ratelimit"
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

// SetRateLimiter keeps the routes' rate_limit budgets: in this process
// (ratelimit.Local), or in Redis for every ingress process together
// (ratelimit.Redis). Without one, a Local is made at New.
func (s *Server) SetRateLimiter(l ratelimit.Limiter) { s.limiter = l }

// admitRate spends one of the client's rate_limit on r, or answers 429
// with Retry-After and the RateLimit-* headers (IETF draft
// ratelimit-headers, as popular gateways send them). An allowed request
// carries them too. Without auth, the client is its address.
func (s *Server) admitRate(ctx *fasthttp.RequestCtx, r *route, client string) bool {
	if r.rateLimit.Rate <= 0 {
		return true
	}
	// The key is the route's part, then the client or its address, built
	// in one buffer: one allocation, the string the limiter keeps.
	var kb [96]byte
	key := append(kb[:0], r.limitKey...)
	if s.auth == nil {
		ip, _ := netip.AddrFromSlice(ctx.RemoteIP()) // as net.IP.String writes it
		key = ip.Unmap().AppendTo(key)
	} else {
		key = append(key, client...)
	}
	res, _ := s.limiter.Allow(context.Background(), string(key), r.rateLimit) // never fails: it falls back to this process's budget
	if !res.Allowed {
		who := string(key[len(r.limitKey):])
		problem(ctx, 429, "client "+strconv.Quote(who)+" is over route "+r.cfg.Name+"'s rate limit ("+
			strconv.FormatFloat(r.rateLimit.Rate, 'g', -1, 64)+"/s, burst "+strconv.Itoa(r.rateLimit.Burst)+"); try later",
			ceilSeconds(res.RetryAfter))
	}
	h := &ctx.Response.Header
	var buf [20]byte // the header copies the value: no allocation
	h.SetBytesV("RateLimit-Limit", strconv.AppendInt(buf[:0], int64(res.Limit), 10))
	h.SetBytesV("RateLimit-Remaining", strconv.AppendInt(buf[:0], int64(res.Remaining), 10))
	h.SetBytesV("RateLimit-Reset", strconv.AppendInt(buf[:0], int64(ceilSeconds(res.Reset)), 10))
	return res.Allowed
}

// ceilSeconds is d in whole seconds, rounded up, at least 1.
func ceilSeconds(d time.Duration) int {
	return max(1, int((d+time.Second-1)/time.Second))
}
