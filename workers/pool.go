package workers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
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
	"github.com/sluice-gw/sluice/internal/retry"
	"golang.org/x/net/http/httpguts"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/config"
	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/wire"
)

// idleFetch is how long an idle dispatcher waits for a message while
// holding a permit.
const idleFetch = 250 * time.Millisecond

// inFlightAfter is how long an attempt runs before its in_flight status is
// published.
const inFlightAfter = 50 * time.Millisecond

// maxFetch is the most messages one pull takes.
const maxFetch = 64

// settleTimeout bounds how long one delivery's follow-up writes (retry or
// dead-letter copy, status event, acknowledgement) may take.
const settleTimeout = 30 * time.Second

// eventTimeout bounds the publish of an in_flight status event.
const eventTimeout = 5 * time.Second

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
	cfg          config.Backend
	broker       Broker
	lim          *Limiter
	client       *http.Client
	urls         []*url.URL
	bal          *balancer
	log          zerolog.Logger
	drain        time.Duration
	settleWithin time.Duration // settleTimeout; shorter in tests
	stopBy       atomic.Pointer[stopTimes]
	settled      Settled // nil: every request of a batch handed out again is delivered
	packed       func(topic string, requests int)
	tracer       Tracer // nil: tracing off
	Counter      Counters
	latency      *latencyHist // attempt durations; nil with metrics: false
}

// Broker is what a pool needs of the broker.
type Broker interface {
	broker.Publisher
	broker.Subscriber
}

// SettingsOf is backend b's settings as its config gives them, before any
// tuning.
func SettingsOf(b config.Backend) Settings {
	return Settings{Rate: b.Rate, Burst: b.Burst, Concurrency: b.Concurrency, Adaptive: b.Adaptive}
}

// NewPool builds the pool of backend b. drain bounds how long Run waits for
// in-flight deliveries at shutdown before handing them back.
func NewPool(b config.Backend, br Broker, log zerolog.Logger, drain time.Duration) *Pool {
	p := &Pool{cfg: b, broker: br, log: log.With().Str("backend", b.Name).Logger(), drain: drain,
		settleWithin: settleTimeout, latency: &latencyHist{}}
	p.lim = NewLimiter(SettingsOf(b), *b.Breaker.Failures, b.Breaker.Cooldown.D())
	p.lim.SetProbes(b.Breaker.Probes)
	for _, raw := range b.URLs {
		u, _ := url.Parse(raw) // validated by config
		p.urls = append(p.urls, u)
	}
	p.bal = newBalancer(len(p.urls))
	p.client = &http.Client{
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        4 * max(b.Concurrency, 16),
			MaxIdleConnsPerHost: 2 * max(b.Concurrency, 16),
			IdleConnTimeout:     90 * time.Second,
			ForceAttemptHTTP2:   false,
			// Headers are stored with the outcome (up to
			// job.MaxStoredHeaders); a backend sending more is broken.
			MaxResponseHeaderBytes: 256 << 10,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return p
}

// Name is the backend's name.
func (p *Pool) Name() string { return p.cfg.Name }

// Run delivers until ctx ends, then stops in order: fetching stops, the
// deliveries in flight finish (up to the drain time; then they are cut
// short and handed back), and only then the subscription closes, so every
// delivery settles while its subscription can still acknowledge it.
func (p *Pool) Run(ctx context.Context) error {
	sub, err := p.broker.Subscribe(ctx, broker.RequestTopic(p.cfg.Name), broker.SubscribeOptions{Prefetch: p.prefetch()})
	if err != nil {
		return err
	}
	var follower sync.WaitGroup
	defer follower.Wait()
	if sh, ok := sub.(broker.Sharer); ok {
		follower.Add(1)
		go func() {
			defer follower.Done()
			p.followShare(ctx, sh)
		}()
	}
	u := newUnpacking(sub, p.broker, broker.RequestTopic(p.cfg.Name), p.settled, p.log, p.within)
	u.packed = p.packed
	// Deliveries outlive ctx by up to the drain time.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	var wg sync.WaitGroup
	for {
		first, err := p.lim.AcquireUnpaused(ctx)
		if errors.Is(err, ErrPaused) {
			if err := p.holdWhilePaused(ctx, u, &wg); err != nil {
				break
			}
			continue
		}
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
		ds, err := u.Fetch(fctx, len(permits))
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
				p.handBack(d)
			}
			continue
		}
		for i, d := range ds {
			permits[i].Begin()
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.deliver(work, d, permits[i])
			}()
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	drain := p.drain
	if st := p.stopBy.Load(); st != nil {
		drain = time.Until(st.drain)
	}
	select {
	case <-done:
	case <-time.After(drain):
		p.log.Warn().Msg("in-flight deliveries outlived the shutdown timeout; handing them back")
		cancelWork()
		<-done
	}
	return u.Close()
}

// prefetch is how many messages the subscription may hold ahead: enough to
// keep the pool busy, and with a rate no more than about a second's worth
// of messages — a message may pack group_commit.max_requests requests, and
// what is held ahead runs down the broker's ack deadline (RabbitMQ's
// consumer timeout) until it is delivered.
func (p *Pool) prefetch() int {
	n := min(max(p.cfg.Concurrency, 8), 256)
	if r := p.cfg.Rate; r > 0 {
		n = min(n, max(2, int(math.Ceil(r))))
	}
	return n
}

// stopTimes bound a stop: deliveries in flight may finish until drain, and
// nothing of the pool's may run past hard.
type stopTimes struct{ drain, hard time.Time }

// StopBy bounds the stop that follows: in-flight deliveries are cut short
// and handed back at drain, and every write of the pool ends by hard. Call
// it before the context of Run ends.
func (p *Pool) StopBy(drain, hard time.Time) { p.stopBy.Store(&stopTimes{drain, hard}) }

// within is how long a settling write may take now.
func (p *Pool) within() time.Duration {
	d := p.settleWithin
	if st := p.stopBy.Load(); st != nil {
		d = min(d, max(100*time.Millisecond, time.Until(st.hard)))
	}
	return d
}

// holdWhilePaused waits out a pause. Once the deliveries in flight have
// settled, the subscription hands back what it holds (the requests it
// unpacked; at the broker, RabbitMQ's prefetch — a long pause would
// otherwise keep them unsettled, counted against the delivery limit at
// each consumer timeout), and takes them again once the pause ends.
func (p *Pool) holdWhilePaused(ctx context.Context, sub *unpacking, inFlight *sync.WaitGroup) error {
	inFlight.Wait() // what Fetch returned settles while the consumer holds it
	if err := sub.Pause(ctx); err != nil {
		p.log.Warn().Err(err).Msg("pause: buffered messages stay with this consumer")
	}
	if err := p.lim.WaitUnpaused(ctx); err != nil {
		return err
	}
	return retry.Do(ctx, retry.Backoff(100*time.Millisecond, 5*time.Second), func() error {
		err := sub.Resume(ctx)
		if err != nil {
			p.log.Warn().Err(err).Msg("resume after pause; retrying")
		}
		return err
	})
}

// handBack returns d to its topic untouched, to be delivered again.
func (p *Pool) handBack(d broker.Delivery) {
	ctx, cancel := context.WithTimeout(context.Background(), p.within())
	defer cancel()
	if err := d.Nack(ctx, 0); err != nil {
		p.log.Warn().Err(err).Msg("hand back; the broker redelivers it after its ack deadline")
	}
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
	req, err := wire.DecodeRequest(d.Message())
	if err != nil {
		permit.Release()
		p.log.Error().Err(err).Msg("dropping undecodable request message")
		actx, cancel := context.WithTimeout(context.Background(), p.within())
		defer cancel()
		if err := d.Ack(actx); err != nil {
			p.log.Warn().Err(err).Msg("ack of an undecodable message; the broker hands it out again")
		}
		return
	}
	attempt := req.Attempts + 1
	p.Counter.Attempts.Add(1)
	p.Counter.InFlight.Add(1)
	defer p.Counter.InFlight.Add(-1)
	// in_flight is progress only, worth an event when a poller could see it:
	// an attempt answered within inFlightAfter goes straight to its outcome.
	// The timer's publish is waited for, so nothing is published about this
	// delivery after it settled.
	inflight := job.EventFor(req, job.InFlight, attempt)
	inflight.LastError = req.LastError
	published := make(chan struct{})
	progress := time.AfterFunc(inFlightAfter, func() {
		defer close(published)
		ectx, cancel := context.WithTimeout(ctx, eventTimeout)
		defer cancel()
		_ = p.broker.Publish(ectx, broker.ResultTopic, wire.EncodeEvent(inflight))
	})

	res := p.attempt(ctx, req, attempt)
	if !progress.Stop() {
		<-published
	}
	verdict := Classify(res.status, res.err, p.cfg.Retry.OnStatus)
	switch {
	case errors.Is(res.err, errBuild), ctx.Err() != nil:
		// Sluice's fault or a shutdown, not the backend's: no breaker,
		// no outlier.
		permit.Release()
		p.bal.report(res.url, res.probe, outcomeNeutral)
	default:
		permit.Done(verdict != Retry)
		p.latency.observe(res.took) // the attempt log's duration too
		switch {
		case res.err != nil:
			p.bal.report(res.url, res.probe, outcomeConnFailure)
		case verdict == Retry && res.status >= 500:
			p.bal.report(res.url, res.probe, outcome5xx)
		default:
			p.bal.report(res.url, res.probe, outcomeOK)
		}
	}
	if ctx.Err() != nil { // shutdown cut the attempt short: hand it back untouched
		p.handBack(d)
		return
	}
	// The retry or dead letter copy and the outcome's event carry the log
	// with this attempt.
	req.AttemptLog = req.AttemptLog.With(logEntry(req, attempt, res))

	var lastErr string
	if res.err != nil {
		lastErr = describe(res.err)
	} else if verdict != Success {
		lastErr = strconv.Itoa(res.status) + " " + http.StatusText(res.status)
	}
	now := time.Now()
	maxWait := p.cfg.Retry.MaxBackoff.D()
	switch {
	case verdict == Retry && attempt < p.cfg.Retry.MaxAttempts:
		wait := Backoff(attempt, p.cfg.Retry.InitialBackoff.D(), maxWait, rand.Int64N)
		if ra := retryAfter(res.header, now, maxWait); ra > wait {
			wait = ra
		}
		next := *req
		next.Attempts, next.LastError, next.AvoidURL = attempt, lastErr, res.url+1
		msg := wire.EncodeRequest(&next)
		msg.NotBefore = now.Add(wait)
		ev := job.EventFor(req, job.Retrying, attempt)
		ev.LastError = lastErr
		if p.settle(ctx, d, ev, broker.RequestTopic(p.cfg.Name), msg) {
			p.Counter.Retried.Add(1)
		}
	case verdict == Retry: // out of attempts
		dead := *req
		dead.Attempts, dead.LastError, dead.DeadAt, dead.AvoidURL = attempt, lastErr, now, 0
		ev := job.EventFor(req, job.Failed, attempt)
		ev.LastError, ev.DeadLettered = lastErr, true
		if res.err == nil {
			ev.Response = job.NewResponse(res.status, res.header, res.body, res.cut)
		}
		if p.settle(ctx, d, ev, broker.DeadLetterTopic(p.cfg.Name), wire.EncodeRequest(&dead)) {
			p.Counter.DeadLettered.Add(1)
			p.Counter.Failed.Add(1)
		}
	default:
		ev := job.EventFor(req, job.Succeeded, attempt)
		if verdict == Terminal {
			ev.Status = job.Failed
		}
		ev.LastError = lastErr
		if res.err == nil {
			ev.Response = job.NewResponse(res.status, res.header, res.body, res.cut)
		}
		if p.settle(ctx, d, ev, "", broker.Message{}) {
			if verdict == Terminal {
				p.Counter.Failed.Add(1)
			} else {
				p.Counter.Succeeded.Add(1)
			}
		}
	}
}

// settle writes what follows an attempt and acknowledges d; it reports
// whether d was acknowledged. With a retry copy (topic set, the event not
// terminal) the copy goes first; once it is durable the original is done
// whatever happens next — handing it back too would fork the request into
// two chains — so the status event is retried (and shrunk if too large) and
// d acknowledged even if the event cannot be written. A dead letter's copy
// goes first too, but its original is done only once the terminal event is
// written as well (a poll must not stay pending); a second dead letter of
// the same request is harmless. Without a copy, an event the broker cannot
// take hands d back, and the attempt is made again later.
func (p *Pool) settle(ctx context.Context, d broker.Delivery, ev *job.Event, topic string, msg broker.Message) bool {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.within())
	defer cancel()
	copied := false
	if topic != "" {
		err := p.broker.Publish(pctx, topic, msg)
		switch {
		case err == nil:
			copied = true
		case errors.Is(err, broker.ErrTooLarge):
			// It fit when it was accepted, but its copy does not (a topic
			// with a smaller limit): it cannot go on, so it fails here.
			p.log.Error().Err(err).Str("id", ev.ID).Str("topic", topic).Msg("copy refused as too large; the request fails")
			ev.Status, ev.DeadLettered = job.Failed, false
			ev.LastError = "too large to requeue"
		default:
			p.log.Warn().Err(err).Str("id", ev.ID).Msg("outcome not stored; request handed back")
			_ = d.Nack(pctx, time.Second)
			return false
		}
	}
	if err := p.publishEvent(pctx, ev, copied); err != nil {
		// A terminal outcome must reach its record, or the poll says
		// pending forever: a dead letter whose event could not be written
		// is handed back too, and its next attempt writes the event (the
		// duplicate dead letter lists once: listings go by request id).
		// A retry's event may go: the next attempt's events replace it.
		if !copied || ev.Status.Terminal() {
			p.log.Warn().Err(err).Str("id", ev.ID).Msg("outcome not stored; request handed back")
			_ = d.Nack(context.WithoutCancel(pctx), time.Second)
			return false
		}
		p.log.Error().Err(err).Str("id", ev.ID).Str("status", string(ev.Status)).
			Msg("status event lost; the request itself is safe in " + topic)
	}
	if err := d.Ack(pctx); err != nil {
		p.log.Warn().Err(err).Str("id", ev.ID).Msg("ack")
	}
	return true
}

// publishEvent writes ev to the result topic. A response too large for the
// broker is stored truncated (body dropped, then the response), never
// retried as if the broker were away. persist keeps retrying transient
// failures until ctx ends; otherwise the first one is returned.
func (p *Pool) publishEvent(ctx context.Context, ev *job.Event, persist bool) error {
	var last error
	err := retry.Do(ctx, retry.Backoff(100*time.Millisecond, 2*time.Second), func() error {
		for {
			last = p.broker.Publish(ctx, broker.ResultTopic, wire.EncodeEvent(ev))
			switch {
			case last == nil:
				return nil
			case errors.Is(last, broker.ErrTooLarge) && ev.Response != nil && ev.Response.Body != "":
				ev.Response = ev.Response.WithoutBody()
				continue
			case errors.Is(last, broker.ErrTooLarge) && ev.Response != nil:
				ev.Response = nil
				if ev.LastError == "" {
					ev.LastError = "response too large to store"
				}
				continue
			case errors.Is(last, broker.ErrTooLarge) || !persist:
				return retry.Permanent(last)
			}
			return last
		}
	})
	if err != nil && ctx.Err() != nil && last != nil {
		return last // why it was not written, rather than that ctx ended
	}
	return err
}

// target is the url of an attempt of req on the backend's url i.
func (p *Pool) target(req *job.Request, i int) string {
	u := *p.urls[i]
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

// result is one attempt's outcome.
type result struct {
	status int
	header http.Header
	body   []byte
	cut    bool // body longer than job.MaxStoredBody, cut there
	err    error
	url    int           // the index of the url tried
	probe  bool          // a probe of an ejected url
	at     time.Time     // when the attempt began
	took   time.Duration // how long it took, the response body read
}

// attempt makes one HTTP request; err is set for network errors, timeouts
// and requests that cannot be built (errBuild).
func (p *Pool) attempt(ctx context.Context, req *job.Request, attempt int) (res result) {
	res.at = time.Now()
	defer func() { res.took = time.Since(res.at) }()
	res.url, res.probe = p.bal.pick(req.AvoidURL - 1)
	for _, kv := range req.Header {
		if !httpguts.ValidHeaderFieldName(kv[0]) || !httpguts.ValidHeaderFieldValue(kv[1]) {
			res.err = fmt.Errorf("%w: header %q", errBuild, kv[0])
			return res
		}
	}
	actx, cancel := context.WithTimeout(ctx, p.cfg.Timeout.D())
	defer cancel()
	hr, err := http.NewRequestWithContext(actx, req.Method, p.target(req, res.url), bytes.NewReader(req.Body))
	if err != nil {
		res.err = fmt.Errorf("%w: %v", errBuild, err)
		return res
	}
	for _, kv := range req.Header {
		hr.Header.Add(kv[0], kv[1])
	}
	if hr.Header.Get("User-Agent") == "" {
		hr.Header.Set("User-Agent", "sluice")
	}
	hr.Header.Set("X-Request-Id", req.ID)
	hr.Header.Set("X-Sluice-Attempt", strconv.Itoa(attempt))
	if p.tracer != nil {
		defer p.traceAttempt(hr, req, attempt)(&res) // ends once the body is read
	}
	resp, err := p.client.Do(hr)
	if err != nil {
		res.err = err
		return res
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, job.MaxStoredBody+1))
	if err != nil {
		res.err = err
		return res
	}
	if len(body) > job.MaxStoredBody {
		body, res.cut = body[:job.MaxStoredBody], true
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<20)) // keep the connection reusable
	res.status, res.header, res.body = resp.StatusCode, resp.Header, body
	return res
}
