package workers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/config"
	"github.com/sluice-gw/sluice/job"
)

// idleFetch is how long an idle dispatcher waits for a message while
// holding a permit.
const idleFetch = 250 * time.Millisecond

// inFlightAfter is how long an attempt runs before its in_flight status is
// published.
const inFlightAfter = 50 * time.Millisecond

// maxFetch is the most messages one pull takes.
const maxFetch = 64

// MaxStoredBody is the most of a backend's response body kept for polling.
const MaxStoredBody = 1 << 20

// Counters are a pool's running totals.
type Counters struct {
	InFlight     atomic.Int64 // deliveries under way now
	Attempts     atomic.Int64
	Succeeded    atomic.Int64
	Failed       atomic.Int64
	Retried      atomic.Int64
	DeadLettered atomic.Int64
}

// Pool delivers one backend's requests. One dispatcher takes a permit from
// the limiter, then a message, and hands it to a goroutine; so no more than
// the limiter allows is ever in flight, and a retry is republished with a
// not-before time instead of waiting in a worker.
type Pool struct {
	cfg     config.Backend
	broker  Broker
	lim     *Limiter
	client  *http.Client
	urls    []*url.URL
	next    atomic.Uint64
	log     zerolog.Logger
	drain   time.Duration
	Counter Counters
}

// Broker is what a pool needs of the broker.
type Broker interface {
	broker.Publisher
	broker.Subscriber
}

// NewPool builds the pool of backend b. drain bounds how long Run waits for
// in-flight deliveries at shutdown before handing them back.
func NewPool(b config.Backend, br Broker, log zerolog.Logger, drain time.Duration) *Pool {
	p := &Pool{cfg: b, broker: br, log: log.With().Str("backend", b.Name).Logger(), drain: drain}
	p.lim = NewLimiter(Settings{Rate: b.Rate, Burst: b.Burst, Concurrency: b.Concurrency},
		*b.Breaker.Failures, b.Breaker.Cooldown.D())
	for _, raw := range b.URLs {
		u, _ := url.Parse(raw) // validated by config
		p.urls = append(p.urls, u)
	}
	p.client = &http.Client{
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        4 * max(b.Concurrency, 16),
			MaxIdleConnsPerHost: 2 * max(b.Concurrency, 16),
			IdleConnTimeout:     90 * time.Second,
			ForceAttemptHTTP2:   false,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return p
}

// Name is the backend's name.
func (p *Pool) Name() string { return p.cfg.Name }

// Limiter is the pool's live-tunable gate.
func (p *Pool) Limiter() *Limiter { return p.lim }

// Run delivers until ctx ends, then stops fetching, waits up to the drain
// time for deliveries in flight and hands back the rest.
func (p *Pool) Run(ctx context.Context) error {
	sub, err := p.broker.Subscribe(ctx, broker.RequestTopic(p.cfg.Name),
		broker.SubscribeOptions{Prefetch: min(max(p.cfg.Concurrency, 8), 256)})
	if err != nil {
		return err
	}
	if sh, ok := sub.(broker.Sharer); ok {
		go p.followShare(ctx, sh)
	}
	// Deliveries outlive ctx by up to the drain time.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	var wg sync.WaitGroup
	for {
		first, err := p.lim.Acquire(ctx)
		if err != nil {
			break
		}
		// Take every further permit free right now, and fetch that many
		// messages in one pull; permits left over are given back whole.
		permits := []*Permit{first}
		for len(permits) < maxFetch {
			q := p.lim.TryAcquire()
			if q == nil {
				break
			}
			permits = append(permits, q)
		}
		// A short wait, so an idle dispatcher gives its permits back often
		// and a pause or a lower concurrency takes effect at once.
		fctx, cancel := context.WithTimeout(ctx, idleFetch)
		ds, err := sub.Fetch(fctx, len(permits))
		cancel()
		for _, q := range permits[len(ds):] {
			q.Cancel()
		}
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, broker.ErrClosed) {
				break
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				p.log.Error().Err(err).Msg("fetch")
			}
			continue
		}
		if p.lim.Settings().Paused { // paused while we waited: leave them queued
			for i, d := range ds {
				permits[i].Cancel()
				_ = d.Nack(ctx, 0)
			}
			continue
		}
		for i, d := range ds {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.deliver(work, d, permits[i])
			}()
		}
	}
	_ = sub.Close()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(p.drain):
		p.log.Warn().Msg("in-flight deliveries outlived the shutdown timeout; handing them back")
		cancelWork()
		<-done
	}
	return nil
}

// followShare keeps the limiter at this process's share of the backend's
// limits, as the broker reassigns the topic among worker processes.
func (p *Pool) followShare(ctx context.Context, sh broker.Sharer) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		f, err := sh.Share(qctx)
		cancel()
		if err == nil && f > 0 {
			p.lim.SetShare(f)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *Pool) deliver(ctx context.Context, d broker.Delivery, permit *Permit) {
	req, err := job.DecodeRequest(d.Message())
	if err != nil {
		permit.Done(true)
		p.log.Error().Err(err).Msg("dropping undecodable request message")
		_ = d.Ack(ctx)
		return
	}
	attempt := req.Attempts + 1
	p.Counter.Attempts.Add(1)
	p.Counter.InFlight.Add(1)
	defer p.Counter.InFlight.Add(-1)
	// in_flight is progress only, worth an event when a poller could see it:
	// an attempt answered within inFlightAfter goes straight to its outcome.
	inflight := job.EventFor(req, job.InFlight, attempt)
	inflight.LastError = req.LastError
	progress := time.AfterFunc(inFlightAfter, func() {
		_ = p.broker.Publish(ctx, broker.ResultTopic, inflight.Message())
	})

	status, header, body, err := p.attempt(ctx, req, attempt)
	progress.Stop()
	verdict := Classify(status, err, p.cfg.Retry.OnStatus)
	permit.Done(verdict != Retry)
	if ctx.Err() != nil { // shutdown cut the attempt short: hand it back untouched
		_ = d.Nack(context.WithoutCancel(ctx), 0)
		return
	}

	var lastErr string
	if err != nil {
		lastErr = describe(err, p.cfg.Timeout.D())
	} else if verdict != Success {
		lastErr = strconv.Itoa(status) + " " + http.StatusText(status)
	}
	now := time.Now()
	switch {
	case verdict == Retry && attempt < p.cfg.Retry.MaxAttempts:
		wait := Backoff(attempt, p.cfg.Retry.InitialBackoff.D(), p.cfg.Retry.MaxBackoff.D(), rand.Int64N)
		if ra := retryAfter(header, now); ra > wait {
			wait = ra
		}
		next := *req
		next.Attempts, next.LastError = attempt, lastErr
		msg := next.Message()
		msg.NotBefore = now.Add(wait)
		ev := job.EventFor(req, job.Retrying, attempt)
		ev.LastError = lastErr
		p.settle(ctx, d, ev, broker.RequestTopic(p.cfg.Name), msg)
		p.Counter.Retried.Add(1)
	case verdict == Retry: // out of attempts
		dead := *req
		dead.Attempts, dead.LastError, dead.DeadAt = attempt, lastErr, now
		ev := job.EventFor(req, job.Failed, attempt)
		ev.LastError, ev.DeadLettered = lastErr, true
		if err == nil {
			ev.Response = job.NewResponse(status, header, body)
		}
		p.settle(ctx, d, ev, broker.DeadLetterTopic(p.cfg.Name), dead.Message())
		p.Counter.DeadLettered.Add(1)
		p.Counter.Failed.Add(1)
	default:
		st := job.Succeeded
		if verdict == Terminal {
			st = job.Failed
			p.Counter.Failed.Add(1)
		} else {
			p.Counter.Succeeded.Add(1)
		}
		ev := job.EventFor(req, st, attempt)
		ev.LastError = lastErr
		ev.Response = job.NewResponse(status, header, body)
		p.settle(ctx, d, ev, "", broker.Message{})
	}
}

// settle publishes the follow-up message (a retry or dead letter, when topic
// is set) and the status event, then acknowledges d. If the broker cannot
// take them, d goes back to the queue and the attempt will be made again.
func (p *Pool) settle(ctx context.Context, d broker.Delivery, ev *job.Event, topic string, msg broker.Message) {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	var err error
	if topic != "" {
		err = p.broker.Publish(pctx, topic, msg)
	}
	if err == nil {
		err = p.broker.Publish(pctx, broker.ResultTopic, ev.Message())
	}
	if err != nil {
		p.log.Warn().Err(err).Str("id", ev.ID).Msg("outcome not stored; request handed back")
		_ = d.Nack(pctx, time.Second)
		return
	}
	if err := d.Ack(pctx); err != nil {
		p.log.Warn().Err(err).Str("id", ev.ID).Msg("ack")
	}
}

func (p *Pool) target(req *job.Request) string {
	base := p.urls[int(p.next.Add(1)-1)%len(p.urls)]
	u := *base
	if req.Path != "" {
		u.Path = strings.TrimSuffix(u.Path, "/") + "/" + strings.TrimPrefix(req.Path, "/")
		u.RawPath = ""
	}
	switch {
	case req.Query == "":
	case u.RawQuery == "":
		u.RawQuery = req.Query
	default:
		u.RawQuery += "&" + req.Query
	}
	return u.String()
}

// attempt makes one HTTP request; err is set for network errors and timeouts.
func (p *Pool) attempt(ctx context.Context, req *job.Request, attempt int) (int, http.Header, []byte, error) {
	actx, cancel := context.WithTimeout(ctx, p.cfg.Timeout.D())
	defer cancel()
	hr, err := http.NewRequestWithContext(actx, req.Method, p.target(req), bytes.NewReader(req.Body))
	if err != nil {
		return 0, nil, nil, fmt.Errorf("build request: %w", err)
	}
	for _, kv := range req.Header {
		hr.Header.Add(kv[0], kv[1])
	}
	if hr.Header.Get("User-Agent") == "" {
		hr.Header.Set("User-Agent", "sluice")
	}
	hr.Header.Set("X-Request-Id", req.ID)
	hr.Header.Set("X-Sluice-Attempt", strconv.Itoa(attempt))
	resp, err := p.client.Do(hr)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxStoredBody))
	if err != nil {
		return 0, nil, nil, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<20)) // keep the connection reusable
	return resp.StatusCode, resp.Header, body, nil
}
