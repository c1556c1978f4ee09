package ingress

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-gw/sluice/internal/retry"
	"github.com/valyala/fasthttp"

	"github.com/sluice-gw/sluice/job"
)

// parseWait reads ?wait=: a Go duration ("10s") or whole seconds ("10").
func parseWait(v string) (time.Duration, bool) {
	if v == "" {
		return 0, true
	}
	if n, err := strconv.Atoi(v); err == nil && n >= 0 {
		return min(time.Duration(n)*time.Second, MaxWait), true
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, false
	}
	return min(d, MaxWait), true
}

// poll answers GET /v1/requests/<id>[?wait=D] and GET /v1/requests/<id>/response.
// With auth on, another client's id is 404, as an unknown one is.
func (s *Server) poll(ctx *fasthttp.RequestCtx, rest, client string) {
	id, sub, _ := strings.Cut(rest, "/")
	if id == "" || (sub != "" && sub != "response") {
		problem(ctx, 404, "no route for this path", 0)
		return
	}
	if m := string(ctx.Method()); m != "GET" && m != "HEAD" {
		problem(ctx, 405, "polling accepts GET and HEAD", 0)
		ctx.Response.Header.Set("Allow", "GET, HEAD")
		return
	}
	wait, ok := parseWait(string(ctx.QueryArgs().Peek("wait")))
	if !ok {
		problem(ctx, 400, `wait must be a duration such as "10s" (at most 30s)`, 0)
		return
	}
	if wait > 0 {
		if n := s.polls.Add(1); n > int64(s.cfg.MaxLongPolls) {
			s.polls.Add(-1)
			problem(ctx, 503, "too many polls are waiting right now; poll without wait, or try later", 1)
			return
		}
		defer s.polls.Add(-1)
	}
	rec, err := s.lookup(id, client, wait)
	switch {
	case errors.Is(err, job.ErrNotFound):
		problem(ctx, 404, "no request with this id (unknown or expired)", 0)
		return
	case err != nil:
		problem(ctx, 503, "the result store is unavailable; try later", 1)
		return
	}
	if sub == "response" {
		s.replay(ctx, rec)
		return
	}
	body := render(rec)
	ctx.SetStatusCode(200)
	ctx.SetContentType("application/json")
	if !rec.Status.Terminal() {
		ctx.Response.Header.Set("Retry-After", "1")
	}
	ctx.SetBody(body)
}

// render encodes rec as a poll answers it (SPEC §3: the record's JSON
// form, which hides its client and generation), without HTML escaping
// (job.Marshal): a backend's "<" stays one byte.
func render(rec *job.Record) []byte {
	b, _ := job.Marshal(rec) // plain struct always encodes
	return b
}

// An id issued moments ago that is not found yet is read again a few
// times, backing off, before the poll answers 404: behind a load balancer
// the poll may reach another process before the accepting one wrote the
// record to the shared store (it does so within milliseconds). Only with a
// shared store (Redis), and counted as a long poll, since anyone can make
// an id that looks fresh.
const (
	freshFor   = 5 * time.Second
	freshFirst = 10 * time.Millisecond
	freshLast  = 320 * time.Millisecond
	freshReads = 9 // from 10 ms, half again as long each time: about 0.75 s in all
)

// get reads id's record, again for a fresh id with a shared store. A poll
// not counted as a long poll yet (counted false) is counted while it reads
// again.
func (s *Server) get(ctx context.Context, id string, counted bool) (*job.Record, error) {
	rec, err := s.store.Get(ctx, id)
	if !errors.Is(err, job.ErrNotFound) || !s.sharedStore {
		return rec, err
	}
	at, ok := job.IssuedAt(id)
	if age := time.Since(at); !ok || age > freshFor || age < -freshFor {
		return rec, err
	}
	if !counted {
		if n := s.polls.Add(1); n > int64(s.cfg.MaxLongPolls) {
			s.polls.Add(-1)
			return rec, err
		}
		defer s.polls.Add(-1)
	}
	wait := retry.Backoff(freshFirst, freshLast)
	for range freshReads {
		if !retry.Sleep(ctx, wait.NextBackOff()) {
			return nil, job.ErrNotFound // the poll ended first
		}
		if rec, err = s.store.Get(ctx, id); !errors.Is(err, job.ErrNotFound) {
			return rec, err
		}
	}
	return rec, err
}

// lookup gets id's record; with wait > 0 it holds until the record is
// terminal, wait passes or the server shuts down, woken by the store.
// Another client's record is not found.
func (s *Server) lookup(id, client string, wait time.Duration) (*job.Record, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second+wait)
	defer cancel()
	rec, err := s.get(ctx, id, wait > 0) // poll counted a waiting poll already
	if err == nil && rec.Client != client {
		return nil, job.ErrNotFound
	}
	if err != nil || wait <= 0 || rec.Status.Terminal() {
		return rec, err
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		changed, stop := s.store.Watch(id)
		// Read again after watching, so a change in between is not missed.
		rec, err = s.store.Get(ctx, id)
		if err != nil || rec.Status.Terminal() {
			stop()
			return rec, err
		}
		select {
		case <-changed:
		case <-deadline.C:
			stop()
			return rec, nil
		case <-s.closing.Done():
			stop()
			return rec, nil
		}
		stop()
	}
}

// replay answers with the backend's terminal response as it was.
func (s *Server) replay(ctx *fasthttp.RequestCtx, rec *job.Record) {
	if !rec.Status.Terminal() {
		problem(ctx, 409, "the request is "+string(rec.Status)+"; its response is not there yet", 1)
		return
	}
	if rec.Response == nil && !s.keep.Keeps(rec.Status) {
		problem(ctx, 410, "the backend's response to a "+string(rec.Status)+" request is not kept (results.keep_response: "+
			s.cfg.Results.KeepResponse+"); last error: "+rec.LastError, 0)
		return
	}
	if rec.Response == nil {
		problem(ctx, 502, "the backend never answered: "+rec.LastError, 0)
		return
	}
	ctx.Response.Header.SetNoDefaultContentType(true)
	for k, v := range rec.Response.Headers {
		switch strings.ToLower(k) {
		case "content-length", "transfer-encoding", "connection", "date", "server":
			continue
		}
		ctx.Response.Header.Set(k, v)
	}
	ctx.Response.Header.Set("X-Request-Id", rec.ID)
	if rec.Response.Truncated {
		// The stored body is not the whole one: say so, and drop what
		// describes the whole body (NewResponse kept none of it).
		ctx.Response.Header.Set("X-Sluice-Truncated", "true")
	}
	ctx.SetStatusCode(rec.Response.Status)
	ctx.SetBody(rec.Response.BodyBytes())
}
