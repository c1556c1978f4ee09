package ingress

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"math"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/config"
	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/schemas"
)

// Store is what ingress needs of the result store.
type Store interface {
	Accept(ctx context.Context, rec *job.Record) error
	// Get returns job.ErrNotFound for an unknown or expired id.
	Get(ctx context.Context, id string) (*job.Record, error)
	Watch(id string) (<-chan struct{}, func())
	Claim(ctx context.Context, client, key, id string) (string, bool, error)
	Unclaim(ctx context.Context, client, key string) error
}

// Backlog tells how many messages wait on a topic and how fast it drains;
// Add counts what this process just published there.
type Backlog interface {
	Backlog(topic string) (depth int64, drain float64)
	Add(topic string, n int64)
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
}

// Server is the ingress. Create it with New.
type Server struct {
	cfg      *config.Config
	pub      broker.Publisher
	store    Store
	backlog  Backlog
	log      zerolog.Logger
	exact    map[string]*route
	prefixes []*route // longest first
	srv      *fasthttp.Server
	inflight atomic.Int64
	closing  chan struct{}
	closeMu  sync.Once

	// ack: fast
	fastQ  chan *job.Request
	fastWG sync.WaitGroup
}

// New compiles the routes of cfg.
func New(cfg *config.Config, pub broker.Publisher, store Store, backlog Backlog, log zerolog.Logger) (*Server, error) {
	s := &Server{cfg: cfg, pub: pub, store: store, backlog: backlog, log: log,
		exact: map[string]*route{}, closing: make(chan struct{})}
	var maxBody int64
	for _, rc := range cfg.Routes {
		r := &route{cfg: rc, prefix: strings.HasSuffix(rc.Path, "/"), methods: map[string]bool{},
			allow: strings.Join(rc.Methods, ", "), backend: *cfg.Backend(rc.Backend), topic: broker.RequestTopic(rc.Backend)}
		for _, m := range rc.Methods {
			r.methods[m] = true
		}
		if rc.Schema != "" {
			sch, err := schemas.Compile(cfg.Path(rc.Schema))
			if err != nil {
				return nil, err
			}
			r.schema = sch
		}
		if r.prefix {
			s.prefixes = append(s.prefixes, r)
		} else {
			s.exact[rc.Path] = r
		}
		maxBody = max(maxBody, int64(rc.MaxBody))
	}
	sort.Slice(s.prefixes, func(i, j int) bool { return len(s.prefixes[i].cfg.Path) > len(s.prefixes[j].cfg.Path) })
	s.srv = &fasthttp.Server{
		Handler:                       s.handle,
		ErrorHandler:                  s.parseError,
		Name:                          "sluice",
		MaxRequestBodySize:            int(min(maxBody, math.MaxInt32)),
		ReadTimeout:                   60 * time.Second,
		WriteTimeout:                  60 * time.Second,
		IdleTimeout:                   120 * time.Second,
		DisablePreParseMultipartForm:  true,
		DisableHeaderNamesNormalizing: false,
		CloseOnShutdown:               true,
		Logger:                        fasthttpLogger{log},
	}
	if cfg.Ack == "fast" {
		s.fastQ = make(chan *job.Request, cfg.MaxInflight)
		for range 32 {
			s.fastWG.Add(1)
			go s.fastPublisher()
		}
	}
	return s, nil
}

type fasthttpLogger struct{ l zerolog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) { f.l.Debug().Msgf(format, args...) }

// Serve answers on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error { return s.srv.Serve(ln) }

// Shutdown stops accepting, lets requests in progress finish (long polls
// return at once), then publishes what ack: fast still buffers.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeMu.Do(func() { close(s.closing) })
	err := s.srv.ShutdownWithContext(ctx)
	if s.fastQ != nil {
		close(s.fastQ)
		done := make(chan struct{})
		go func() { s.fastWG.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			return errors.Join(err, errors.New("ack: fast buffer not flushed before the shutdown timeout"))
		}
	}
	return err
}

func (s *Server) parseError(ctx *fasthttp.RequestCtx, err error) {
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
		s.poll(ctx, string(path[len(pollPrefix):]))
		return
	}
	r, rest := s.match(string(path))
	if r == nil {
		problem(ctx, 404, "no route for this path", 0)
		return
	}
	if !r.methods[string(ctx.Method())] {
		problem(ctx, 405, "this route accepts "+r.allow, 0)
		ctx.Response.Header.Set("Allow", r.allow)
		return
	}
	s.submit(ctx, r, rest)
}

// newID returns a URL-safe id of 144 bits: the time in milliseconds (48
// bits, so stores that key by the decoded id append instead of scattering
// writes) and 96 random bits, which make it unguessable.
func newID() string {
	var b [18]byte
	ms := uint64(time.Now().UnixMilli())
	for i := 5; i >= 0; i-- {
		b[i] = byte(ms)
		ms >>= 8
	}
	_, _ = rand.Read(b[6:]) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// retryAfter estimates, in whole seconds, when a request queued now for r's
// backend may be done: the backlog over its drain rate, measured, else the
// configured rate, else one message per slot per second.
func (s *Server) retryAfter(r *route, depth int64, drain float64) int {
	if depth <= 0 {
		return 1
	}
	rate := drain
	if rate <= 0 {
		rate = r.backend.Rate
	}
	if rate <= 0 {
		rate = float64(r.backend.Concurrency)
	}
	return int(min(86400, max(1, math.Ceil(float64(depth+1)/rate))))
}

func (s *Server) submit(ctx *fasthttp.RequestCtx, r *route, rest string) {
	body := ctx.PostBody()
	if int64(len(body)) > int64(r.cfg.MaxBody) {
		problem(ctx, 413, "request body is larger than this route's max_body ("+strconv.FormatInt(int64(r.cfg.MaxBody), 10)+" bytes)", 0)
		return
	}
	if r.schema != nil {
		if err := r.schema.Validate(body); err != nil {
			problem(ctx, 400, "body does not match the route's schema: "+err.Error(), 0)
			return
		}
	}
	depth, drain := s.backlog.Backlog(r.topic)
	if mb := r.backend.MaxBacklog; mb > 0 && depth >= mb {
		problem(ctx, 503, "backend "+r.backend.Name+" has "+strconv.FormatInt(depth, 10)+" requests waiting; try later",
			s.retryAfter(r, depth, drain))
		return
	}
	if n := s.inflight.Add(1); n > int64(s.cfg.MaxInflight) {
		s.inflight.Add(-1)
		problem(ctx, 503, "too many requests are being queued right now; try later", 1)
		return
	}
	defer s.inflight.Add(-1)

	id := newID()
	client := "" // set by authentication once it exists
	idemKey := string(ctx.Request.Header.Peek("Idempotency-Key"))
	reqCtx, cancel := context.WithTimeout(context.Background(), s.cfg.PublishTimeout.D())
	defer cancel()
	if idemKey != "" {
		bound, created, err := s.store.Claim(reqCtx, client, idemKey, id)
		if err != nil {
			problem(ctx, 503, "the result store is unavailable; try later", 1)
			return
		}
		if !created {
			s.accepted(ctx, bound, s.retryAfter(r, depth, drain))
			return
		}
	}

	req := &job.Request{
		ID: id, Route: r.cfg.Name, Backend: r.backend.Name, Client: client,
		Method: string(ctx.Method()), Path: rest, Query: string(ctx.URI().QueryString()),
		Body: append([]byte(nil), body...), AcceptedAt: time.Now().UTC(),
	}
	conn := string(ctx.Request.Header.Peek("Connection"))
	for k, v := range ctx.Request.Header.All() {
		if name := string(k); job.Forwardable(name, conn) {
			req.Header = append(req.Header, [2]string{name, string(v)})
		}
	}

	if s.fastQ != nil {
		select {
		case s.fastQ <- req:
		default:
			s.unclaim(client, idemKey)
			problem(ctx, 503, "the in-memory buffer is full; try later", 1)
			return
		}
	} else if err := s.pub.Publish(reqCtx, r.topic, req.Message()); err != nil {
		s.log.Warn().Err(err).Str("route", r.cfg.Name).Msg("publish refused; answering 503")
		s.unclaim(client, idemKey)
		problem(ctx, 503, "the queue cannot take the request right now; try later", 2)
		return
	}
	s.backlog.Add(r.topic, 1)
	_ = s.store.Accept(reqCtx, &job.Record{ID: id, Route: r.cfg.Name, Backend: r.backend.Name, Client: client,
		Status: job.Queued, AcceptedAt: req.AcceptedAt, UpdatedAt: req.AcceptedAt})
	s.accepted(ctx, id, s.retryAfter(r, depth+1, drain))
}

func (s *Server) unclaim(client, key string) {
	if key != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = s.store.Unclaim(ctx, client, key)
	}
}

func (s *Server) accepted(ctx *fasthttp.RequestCtx, id string, retryAfter int) {
	loc := pollPrefix + id
	ctx.SetStatusCode(202)
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

// fastPublisher publishes what ack: fast accepted, retrying until it lands.
func (s *Server) fastPublisher() {
	defer s.fastWG.Done()
	for req := range s.fastQ {
		for try := 0; ; try++ {
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.PublishTimeout.D())
			err := s.pub.Publish(ctx, broker.RequestTopic(req.Backend), req.Message())
			cancel()
			if err == nil {
				break
			}
			if try%20 == 0 {
				s.log.Warn().Err(err).Str("id", req.ID).Msg("ack: fast publish failed; retrying")
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}
