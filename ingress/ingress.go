package ingress

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/sluice-gw/sluice/internal/retry"
	"github.com/sluice-gw/sluice/metering"
	"github.com/sluice-gw/sluice/ratelimit"
	"github.com/valyala/fasthttp"

	"github.com/sluice-gw/sluice/auth"
	"github.com/sluice-gw/sluice/backlog"
	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/config"
	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/schemas"
	"github.com/sluice-gw/sluice/wire"
)

// Store is what ingress needs of the result store (results.Store).
type Store interface {
	// Admit reports whether Accept can take a record now; an error means
	// the store is too far behind, and the submit is refused before it is
	// published.
	Admit() error
	Accept(ctx context.Context, rec *job.Record) error
	// Get returns job.ErrNotFound for an unknown or expired id.
	Get(ctx context.Context, id string) (*job.Record, error)
	Watch(id string) (<-chan struct{}, func())
	// Apply stores events; ack: fast uses it to record a request its
	// publisher could not write.
	Apply(ctx context.Context, events []*job.Event) error
	Claim(ctx context.Context, client, key, id string, lease time.Duration) (job.Claim, error)
	Release(ctx context.Context, client, key, id string, queued bool) error
}

// Backlog tells how many messages wait on a topic and how long one more
// would wait (backlog.Monitor); Add counts what this process just published
// there.
type Backlog interface {
	Estimate(topic string, rate float64, slots int) backlog.Estimate
	Add(topic string, n int64)
	// Packed learns how many requests one message of topic carries.
	Packed(topic string, requests int)
}

// MaxWait caps ?wait= on polls.
const MaxWait = 30 * time.Second

const pollPrefix = "/v1/requests/"

type route struct {
	cfg     config.Route
	prefix  bool
	methods map[string]bool
	allow   string
	schema  *schemas.Schema
	backend config.Backend
	topic   string

	cors      *corsPolicy // nil: no CORS headers at all
	transform *transform  // set_headers, remove_headers; nil: none
	clients   map[string]bool
	rateLimit ratelimit.Limit // Rate 0: no limit
	limitKey  string          // the route's part of a rate-limit key
}

// Server is the ingress. Create it with New.
type Server struct {
	cfg      *config.Config
	pub      broker.Publisher // group commit (grouper) over the broker
	store    Store
	backlog  Backlog
	log      zerolog.Logger
	exact    map[string]*route
	prefixes []*route // longest first
	srv      *fasthttp.Server
	inflight atomic.Int64
	polls    atomic.Int64    // long polls waiting now
	closing  context.Context // ends when Shutdown begins
	closeNow context.CancelFunc

	fast *fastPublisher // ack: fast; nil with ack: durable
	keep job.Keep       // results.keep_response

	lnMu sync.Mutex
	lns  []*limitListener

	// sharedStore: the result store is shared by several ingress
	// processes (Redis), so a poll may arrive before the record does.
	sharedStore bool

	meter    *metering.Meter
	pollCORS *corsPolicy         // the routes' origins together; nil: none
	auth     *auth.Authenticator // nil: no auth, every client is ""
	limiter  ratelimit.Limiter
	tracer   Tracer // nil: tracing off
}

// claimWait bounds how long a submit waits for another submit with the
// same Idempotency-Key to finish its write before answering 409.
const claimWait = time.Second

// New compiles the routes of cfg. It starts nothing: Serve does.
func New(cfg *config.Config, pub broker.Publisher, store Store, backlog Backlog, log zerolog.Logger) (*Server, error) {
	gc := cfg.GroupCommit
	group := GroupOptions{MaxRequests: gc.MaxRequests, Writes: gc.Writes,
		MaxBytes: int(min(int64(gc.MaxBytes), cfg.MaxMessageBytes()-broker.Overhead)),
		Timeout:  cfg.PublishTimeout.D(), Packed: backlog.Packed}
	s := &Server{cfg: cfg, pub: newGrouper(pub, group), store: store, backlog: backlog, log: log,
		exact: map[string]*route{}, sharedStore: cfg.Results.Store == "redis", keep: job.ParseKeep(cfg.Results.KeepResponse)}
	s.closing, s.closeNow = context.WithCancel(context.Background())
	var maxBody int64
	var routes []*route // in the config's order
	for _, rc := range cfg.Routes {
		r := &route{cfg: rc, prefix: strings.HasSuffix(rc.Path, "/"), methods: map[string]bool{},
			allow: strings.Join(rc.Methods, ", "), backend: *cfg.Backend(rc.Backend), topic: broker.RequestTopic(rc.Backend)}
		for _, m := range rc.Methods {
			r.methods[m] = true
		}
		if rc.CORS != nil {
			r.cors = newCORS(rc.CORS, rc.Methods)
		}
		t, err := newTransform(rc)
		if err != nil {
			return nil, err
		}
		r.transform = t
		if rl := rc.RateLimit; rl != nil {
			r.rateLimit = ratelimit.Limit{Rate: rl.Rate, Burst: rl.Burst}
			r.limitKey = rc.Name + "\x00"
		}
		if len(rc.Clients) > 0 {
			r.clients = map[string]bool{}
			for _, c := range rc.Clients {
				r.clients[c] = true
			}
		}
		if rc.Schema != "" {
			sch, err := schemas.Compile(cfg.Path(rc.Schema))
			if err != nil {
				return nil, err
			}
			r.schema = sch
		}
		routes = append(routes, r)
		if r.prefix {
			s.prefixes = append(s.prefixes, r)
		} else {
			s.exact[rc.Path] = r
		}
		maxBody = max(maxBody, int64(rc.MaxBody))
	}
	sort.Slice(s.prefixes, func(i, j int) bool { return len(s.prefixes[i].cfg.Path) > len(s.prefixes[j].cfg.Path) })
	s.meter = &metering.Meter{}
	s.limiter = ratelimit.NewLocal()
	s.pollCORS = pollCORS(routes) // in the config's order: the same headers every start
	s.srv = &fasthttp.Server{
		Handler:                       s.handle,
		ErrorHandler:                  s.parseError,
		Name:                          "sluice",
		MaxRequestBodySize:            int(min(maxBody, math.MaxInt32)),
		ReadBufferSize:                MaxHeaderBytes, // larger headers: 431
		ReadTimeout:                   60 * time.Second,
		WriteTimeout:                  60 * time.Second,
		IdleTimeout:                   120 * time.Second,
		DisablePreParseMultipartForm:  true,
		DisableHeaderNamesNormalizing: false,
		CloseOnShutdown:               true,
		Logger:                        fasthttpLogger{log},
	}
	if cfg.Ack == "fast" {
		s.fast = newFastPublisher(pub, group, store, log, cfg.MaxInflight, cfg.PublishTimeout.D())
	}
	return s, nil
}

type fasthttpLogger struct{ l zerolog.Logger }

// Printf logs fasthttp's errors at debug level, without the raw request
// it quotes after "contents:" (credentials would be in it).
func (f fasthttpLogger) Printf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if i := strings.Index(msg, "contents:"); i >= 0 {
		msg = msg[:i] + "contents: (not logged)"
	}
	f.l.Debug().Msg(msg)
}

// Serve answers on ln until Shutdown, with at most max_connections open
// connections (and max_connections_per_ip from one address): one more
// gets 503 and is closed.
func (s *Server) Serve(ln net.Listener) error {
	l := newLimitListener(ln, s.cfg.MaxConnections, s.cfg.MaxConnectionsPerIP)
	s.lnMu.Lock()
	if s.closing.Err() != nil { // Shutdown came first
		s.lnMu.Unlock()
		return nil
	}
	s.lns = append(s.lns, l)
	if s.fast != nil {
		s.fast.start() // Shutdown ends its writers
	}
	s.lnMu.Unlock()
	// A listener Shutdown closed before fasthttp saw it ends this at once.
	return s.srv.Serve(l)
}

// closeSilent closes the connections that never sent a byte: fasthttp's
// shutdown closes idle keep-alive connections but waits for these, and an
// HTTP client's spare connection may never send anything.
func (s *Server) closeSilent() {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	for _, l := range s.lns {
		l.closeSilent()
	}
}

// Shutdown stops accepting, lets requests in progress finish (long polls
// return at once), then publishes what ack: fast still buffers, until ctx
// ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeNow()
	// Close the listeners here too: fasthttp's shutdown closes only those
	// its Serve has already taken, and a Serve that starts later would
	// run on.
	s.lnMu.Lock()
	for _, l := range s.lns {
		if err := l.Close(); err != nil {
			s.log.Debug().Err(err).Msg("close listener")
		}
	}
	s.lnMu.Unlock()
	done := make(chan error, 1)
	go func() { done <- s.srv.ShutdownWithContext(ctx) }()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var err error
wait:
	for {
		s.closeSilent()
		select {
		case err = <-done:
			break wait
		case <-tick.C:
		}
	}
	if s.fast != nil {
		err = errors.Join(err, s.fast.close(ctx))
	}
	return err
}

// MaxHeaderBytes bounds a request's line and headers; past it, 431.
const MaxHeaderBytes = 8 << 10

// Meter is the per-client metering of this process (GET /admin/clients).
func (s *Server) Meter() *metering.Meter { return s.meter }

func (s *Server) parseError(ctx *fasthttp.RequestCtx, err error) {
	var small *fasthttp.ErrSmallBuffer
	if errors.As(err, &small) || errors.Is(err, fasthttp.ErrSmallReadBuffer) {
		problem(ctx, 431, "the request line and headers are larger than 8 KiB", 0)
		return
	}
	if errors.Is(err, fasthttp.ErrBodyTooLarge) {
		problem(ctx, 413, "request body is larger than any route allows", 0)
		return
	}
	problem(ctx, 400, "malformed HTTP request", 0)
}

func (s *Server) match(path string) (*route, string) {
	if r := s.exact[path]; r != nil {
		return r, ""
	}
	for _, r := range s.prefixes {
		if strings.HasPrefix(path, r.cfg.Path) {
			return r, path[len(r.cfg.Path):]
		}
	}
	return nil, ""
}

func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	path := ctx.Path()
	if len(path) > len(pollPrefix) && string(path[:len(pollPrefix)]) == pollPrefix {
		if c := s.pollCORS; c != nil {
			if isPreflight(ctx) {
				c.preflight(ctx)
				return
			}
			defer c.decorate(ctx)
		}
		client, ok := s.authenticate(ctx)
		if !ok {
			return
		}
		s.poll(ctx, string(path[len(pollPrefix):]), client)
		return
	}
	r, rest := s.match(string(path))
	if r == nil {
		problem(ctx, 404, "no route for this path", 0)
		return
	}
	if r.cors != nil {
		if isPreflight(ctx) {
			r.cors.preflight(ctx) // never enqueued, never metered
			return
		}
		defer r.cors.decorate(ctx)
	}
	client := ""
	defer func() { s.meter.Count(client, r.cfg.Name, ctx.Response.StatusCode(), len(ctx.PostBody())) }()
	var span AcceptSpan // nil: tracing off
	if s.tracer != nil {
		span = s.startSpan(ctx, r)
		defer func() { endSpan(span, ctx, client) }()
	}
	if !r.methods[string(ctx.Method())] {
		problem(ctx, 405, "this route accepts "+r.allow, 0)
		ctx.Response.Header.Set("Allow", r.allow)
		return
	}
	var ok bool
	if client, ok = s.authenticate(ctx); !ok {
		return
	}
	if r.clients != nil && !r.clients[client] {
		problem(ctx, 403, "client "+strconv.Quote(client)+" may not use route "+r.cfg.Name, 0)
		return
	}
	if !s.admitRate(ctx, r, client) {
		return
	}
	s.submit(ctx, r, rest, client, span)
}

// estimate is how long a request queued now for r's backend waits: its
// backlog over the measured drain rate, else over the configured rate, else
// one request per slot and second (backlog.Monitor.Estimate).
func (s *Server) estimate(r *route) backlog.Estimate {
	return s.backlog.Estimate(r.topic, r.backend.Rate, r.backend.Concurrency)
}

// retryAfter is an estimate in whole seconds, at least 1, at most a day.
func retryAfter(e backlog.Estimate) int {
	return int(min(86400, max(1, math.Ceil(e.Wait.Seconds()))))
}

func (s *Server) submit(ctx *fasthttp.RequestCtx, r *route, rest, client string, span AcceptSpan) {
	body := ctx.PostBody()
	if int64(len(body)) > int64(r.cfg.MaxBody) {
		problem(ctx, 413, "request body is larger than this route's max_body ("+strconv.FormatInt(int64(r.cfg.MaxBody), 10)+" bytes)", 0)
		return
	}
	owned := false // body is ours (inflated), not fasthttp's buffer
	if enc := contentEncoding(&ctx.Request.Header); encoded(enc) {
		switch {
		case r.cfg.Decompress:
			b, err := inflate(enc, body, int64(r.cfg.MaxBody))
			switch {
			case errors.Is(err, errCoding):
				problem(ctx, 415, "Content-Encoding "+strconv.Quote(string(enc))+" is not supported; send gzip or deflate", 0)
				return
			case errors.Is(err, errTooBig):
				problem(ctx, 413, "the inflated body is larger than this route's max_body ("+strconv.FormatInt(int64(r.cfg.MaxBody), 10)+" bytes)", 0)
				return
			case err != nil:
				problem(ctx, 400, "the body is not valid "+string(enc)+" data", 0)
				return
			}
			body, owned = b, true
		case r.schema != nil:
			problem(ctx, 415, "this route checks its body against a schema and cannot read a "+strconv.Quote(string(enc))+
				" body; send it uncompressed, or set decompress: true on the route", 0)
			return
		}
	}
	if r.prefix {
		if why := badPath(rest, ctx.URI().PathOriginal()); why != "" {
			problem(ctx, 400, "the path "+why, 0)
			return
		}
	}
	if why := badQuery(ctx.URI().QueryString()); why != "" {
		problem(ctx, 400, "the query "+why, 0)
		return
	}
	header, why := forwarded(&ctx.Request.Header, owned)
	if why != "" {
		problem(ctx, 400, why, 0)
		return
	}
	if r.schema != nil {
		if err := r.schema.Validate(body); err != nil {
			problem(ctx, 400, "body does not match the route's schema: "+err.Error(), 0)
			return
		}
	}
	est := s.estimate(r)
	if mb := r.backend.MaxBacklog; mb > 0 && est.Depth >= mb {
		problem(ctx, 503, "backend "+r.backend.Name+" has "+strconv.FormatInt(est.Depth, 10)+" requests waiting; try later",
			retryAfter(est))
		return
	}
	if n := s.inflight.Add(1); n > int64(s.cfg.MaxInflight) {
		s.inflight.Add(-1)
		problem(ctx, 503, "too many requests are being queued right now; try later", 1)
		return
	}
	defer s.inflight.Add(-1)
	if err := s.store.Admit(); err != nil {
		problem(ctx, 503, "the result store is behind; try later", 2)
		return
	}

	id := job.NewID()
	idemKey := string(ctx.Request.Header.Peek("Idempotency-Key"))
	if idemKey != "" {
		claim, err := s.claim(client, idemKey, id)
		switch {
		case err != nil:
			problem(ctx, 503, "the result store is unavailable; try later", 1)
			return
		case claim.State == job.ClaimQueued:
			s.accepted(ctx, r, claim.ID, retryAfter(est))
			return
		case claim.State == job.ClaimPending:
			problem(ctx, 409, "a request with this Idempotency-Key is being queued right now; try again", 1)
			return
		}
		// Owned: a fresh id, or an earlier request's id whose write failed
		// or may have landed. If it landed and a worker got to it, it is
		// queued already; else it is written again under the same id.
		if claim.ID != id {
			id = claim.ID
			if rec, err := s.getWithin(id); err == nil && rec != nil {
				s.release(client, idemKey, id, true)
				s.accepted(ctx, r, id, retryAfter(est))
				return
			}
		}
	}

	if r.transform != nil {
		header = r.transform.apply(header, client, r.cfg.Name, id)
	}
	if span != nil {
		header = span.Carry(header)
	}
	if !owned {
		body = append([]byte(nil), body...) // fasthttp reuses its buffer
	}
	req := &job.Request{
		ID: id, Route: r.cfg.Name, Backend: r.backend.Name, Client: client,
		Method: string(ctx.Method()), Path: rest, Query: string(ctx.URI().QueryString()),
		Header: header, Body: body, AcceptedAt: time.Now().UTC(),
	}

	if s.fast != nil {
		if err := s.fast.enqueue(req); err != nil {
			s.release(client, idemKey, id, false)
			problem(ctx, 503, "the in-memory buffer is full; try later", 1)
			return
		}
	} else if err := s.publish(r.topic, req); err != nil {
		// Failed or timed out, maybe landed: the key keeps this id, so a
		// retry writes it again instead of making a second request.
		s.release(client, idemKey, id, false)
		if errors.Is(err, broker.ErrTooLarge) {
			problem(ctx, 413, "the queue refuses a request this large", 0)
			return
		}
		s.log.Warn().Err(err).Str("route", r.cfg.Name).Msg("publish refused; answering 503")
		problem(ctx, 503, "the queue cannot take the request right now; try later", 2)
		return
	}
	s.backlog.Add(r.topic, 1)
	_ = s.store.Accept(context.Background(), &job.Record{ID: id, Route: r.cfg.Name, Backend: r.backend.Name, Client: client,
		Status: job.Queued, AcceptedAt: req.AcceptedAt, UpdatedAt: req.AcceptedAt})
	s.release(client, idemKey, id, true)
	s.accepted(ctx, r, id, retryAfter(est))
}

// publish writes req to topic (ack: durable; ack: fast's writers have
// their own). The group commit bounds the write by publish_timeout.
func (s *Server) publish(topic string, req *job.Request) error {
	return s.pub.Publish(context.Background(), topic, wire.EncodeRequest(req))
}

// getWithin reads id's record within publish_timeout.
func (s *Server) getWithin(id string) (*job.Record, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.PublishTimeout.D())
	defer cancel()
	return s.store.Get(ctx, id)
}

// claim takes the idempotency key for id, waiting up to claimWait while
// another submit holds it and is still writing.
func (s *Server) claim(client, key, id string) (job.Claim, error) {
	lease := s.cfg.PublishTimeout.D() + 5*time.Second
	var c job.Claim
	// The wait ends with the shutdown, or after claimWait.
	wctx, cancel := context.WithTimeout(s.closing, claimWait)
	defer cancel()
	err := retry.Do(wctx, retry.Backoff(5*time.Millisecond, 100*time.Millisecond), func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var err error
		if c, err = s.store.Claim(ctx, client, key, id, lease); err != nil {
			return retry.Permanent(err)
		}
		if c.State == job.ClaimPending {
			return errPending
		}
		return nil
	})
	if errors.Is(err, errPending) || wctx.Err() != nil && c.State == job.ClaimPending {
		err = nil // still pending (or shutting down): the caller answers 409
	}
	return c, err
}

// errPending: another submit with the same key is still writing.
var errPending = errors.New("idempotency key pending")

// release ends an owned idempotency claim, if there is one.
func (s *Server) release(client, key, id string, queued bool) {
	if key == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.store.Release(ctx, client, key, id, queued); err != nil {
		// The claim's lease runs out instead; the next claimant writes the
		// same id again.
		s.log.Warn().Err(err).Str("id", id).Msg("idempotency claim not released")
	}
}

func (s *Server) accepted(ctx *fasthttp.RequestCtx, r *route, id string, retryAfter int) {
	loc := pollPrefix + id
	ctx.SetStatusCode(r.cfg.Ack.Status) // routes[].ack.status: 200, 201 or 202 (default)
	ctx.SetContentType("application/json")
	h := &ctx.Response.Header
	h.Set("Location", loc)
	h.Set("X-Request-Id", id)
	h.Set("Retry-After", strconv.Itoa(retryAfter))
	b := make([]byte, 0, 128)
	b = append(b, `{"id":"`...)
	b = append(b, id...)
	b = append(b, `","status":"queued","status_url":"`...)
	b = append(b, loc...)
	b = append(b, `"}`...)
	ctx.SetBody(b)
}
