package ingress

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/sluice-gw/sluice/internal/retry"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/wire"
)

// fastWriters is how many writes ack: fast keeps under way at once. Each
// writer takes what is buffered (up to a group's worth) and writes it
// packed, one message per backend: no hand-off per request.
const fastWriters = 8

var (
	errBufferFull = errors.New("ack: fast buffer full")
	errClosing    = errors.New("ack: fast buffer closed")
)

// fastPublisher writes what ack: fast answered 202 for. It retries while
// the broker is away; a request the broker refuses for good (too large) is
// recorded as failed, never dropped silently; at shutdown it writes what it
// buffers until the deadline, then records what is left as lost.
type fastPublisher struct {
	pub     broker.Publisher // the broker itself: the writers pack
	group   GroupOptions
	store   Store
	log     zerolog.Logger
	timeout time.Duration

	mu     sync.RWMutex // guards closed against sends on a closed q
	closed bool
	q      chan *job.Request
	wg     sync.WaitGroup

	startOnce sync.Once

	abort      context.Context // canceled when no new write may start (shutdown)
	abortCause context.CancelFunc

	lostMu sync.Mutex
	lost   []*job.Request // never written
	unsure []string       // ids whose last write timed out: may have landed
}

func newFastPublisher(pub broker.Publisher, group GroupOptions, store Store, log zerolog.Logger, capacity int, timeout time.Duration) *fastPublisher {
	f := &fastPublisher{pub: pub, group: group, store: store, log: log, timeout: timeout, q: make(chan *job.Request, capacity)}
	f.abort, f.abortCause = context.WithCancel(context.Background())
	return f
}

// start starts the writers; close ends them.
func (f *fastPublisher) start() {
	f.startOnce.Do(func() {
		for range fastWriters {
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				f.write()
			}()
		}
	})
}

// enqueue buffers req; it fails when the buffer is full or closing.
func (f *fastPublisher) enqueue(req *job.Request) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return errClosing
	}
	select {
	case f.q <- req:
		return nil
	default:
		return errBufferFull
	}
}

// write takes what is buffered, as much as one write carries, and writes
// it, until the buffer is closed and empty.
func (f *fastPublisher) write() {
	most := max(1, f.group.MaxRequests)
	var reqs []*job.Request
	for req := range f.q {
		reqs = append(reqs[:0], req)
	take:
		for len(reqs) < most {
			select {
			case r, ok := <-f.q:
				if !ok {
					break take
				}
				reqs = append(reqs, r)
			default:
				break take
			}
		}
		for _, g := range f.pack(reqs) {
			f.publish(g)
		}
	}
}

// packed is requests to one topic that travel in one message.
type packed struct {
	topic string
	reqs  []*job.Request
	msg   broker.Message
}

// pack groups reqs by topic into messages within the group limits; a
// request too large to pack goes alone.
func (f *fastPublisher) pack(reqs []*job.Request) []packed {
	var out []packed
	open := map[string]int{} // topic -> index in out of its open group
	var msgs [][]broker.Message
	var sizes []int
	for _, r := range reqs {
		topic := broker.RequestTopic(r.Backend)
		m := wire.EncodeRequest(r)
		n := wire.PackedSize(m)
		i, ok := open[topic]
		if ok && (len(out[i].reqs) >= f.group.MaxRequests || sizes[i]+n > f.group.MaxBytes) {
			ok = false
		}
		if !ok {
			out = append(out, packed{topic: topic})
			msgs = append(msgs, nil)
			sizes = append(sizes, wire.BatchOverhead)
			i = len(out) - 1
			open[topic] = i
		}
		out[i].reqs = append(out[i].reqs, r)
		msgs[i] = append(msgs[i], m)
		sizes[i] += n
	}
	for i := range out {
		out[i].msg = wire.Pack(msgs[i])
	}
	return out
}

// publish writes g, retrying while the broker is away. A group the broker
// refuses as too large is written one by one.
func (f *fastPublisher) publish(g packed) {
	timedOut := false // the last write timed out: it may have landed
	try := 0
	err := retry.Do(f.abort, retry.Backoff(100*time.Millisecond, 2*time.Second), func() error {
		if err := f.abort.Err(); err != nil {
			return retry.Permanent(err)
		}
		try++
		// Not bound to abort: a write under way runs to its timeout, which
		// close leaves room for, so its outcome is known.
		ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
		err := f.pub.Publish(ctx, g.topic, g.msg)
		timedOut = ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded)
		cancel()
		if err != nil && !errors.Is(err, broker.ErrUnavailable) {
			return retry.Permanent(err)
		}
		if err != nil && try%10 == 1 {
			f.log.Warn().Err(err).Str("id", g.reqs[0].ID).Int("requests", len(g.reqs)).Int("try", try).Msg("ack: fast publish failed; retrying")
		}
		return err
	})
	switch {
	case err == nil:
		if f.group.Packed != nil {
			f.group.Packed(g.topic, len(g.reqs))
		}
	case errors.Is(err, broker.ErrTooLarge) && len(g.reqs) > 1:
		for _, r := range g.reqs {
			f.publish(packed{topic: g.topic, reqs: []*job.Request{r}, msg: wire.EncodeRequest(r)})
		}
	case errors.Is(err, broker.ErrTooLarge): // refused for good, even at shutdown
		f.fail(g.reqs, "the queue refused it: too large")
		f.log.Error().Err(err).Str("id", g.reqs[0].ID).Msg("ack: fast request refused by the broker; recorded as failed")
	case errors.Is(err, context.Canceled) && f.abort.Err() != nil: // shutdown: never written
		for _, r := range g.reqs {
			f.addLost(r, timedOut)
		}
	default:
		f.fail(g.reqs, "the queue refused it")
		f.log.Error().Err(err).Str("id", g.reqs[0].ID).Int("requests", len(g.reqs)).Msg("ack: fast requests refused by the broker; recorded as failed")
	}
}

func (f *fastPublisher) addLost(req *job.Request, unsure bool) {
	f.lostMu.Lock()
	defer f.lostMu.Unlock()
	if unsure {
		f.unsure = append(f.unsure, req.ID)
	} else {
		f.lost = append(f.lost, req)
	}
}

// fail records reqs as failed, so polls tell the truth.
func (f *fastPublisher) fail(reqs []*job.Request, why string) {
	events := make([]*job.Event, 0, len(reqs))
	for _, r := range reqs {
		ev := job.EventFor(r, job.Failed, 0)
		ev.LastError = why
		events = append(events, ev)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.store.Apply(ctx, events); err != nil {
		f.log.Error().Err(err).Int("requests", len(reqs)).Msg("ack: fast: could not record failed requests")
	}
}

// close stops taking requests and writes what is buffered until ctx ends:
// it stops starting writes one publish timeout before ctx's deadline, so
// the writes under way end in time with a known outcome. What was never
// written is then recorded as failed; a request whose last write timed out
// (it may have landed, and a failed record would hide its delivery) is
// logged and left queued. close reports how many of each.
func (f *fastPublisher) close(ctx context.Context) error {
	f.mu.Lock()
	if !f.closed {
		f.closed = true
		close(f.q)
	}
	f.mu.Unlock()
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	var stopWriting <-chan time.Time
	if deadline, ok := ctx.Deadline(); ok {
		t := time.NewTimer(max(0, time.Until(deadline)-f.timeout))
		defer t.Stop()
		stopWriting = t.C
	}
	select {
	case <-done:
	case <-stopWriting:
		f.abortCause()
		<-done // writes under way end within their timeout; the rest is drained unwritten
	}
	f.abortCause()
	f.lostMu.Lock()
	lost, unsure := f.lost, f.unsure
	f.lostMu.Unlock()
	if len(lost) == 0 && len(unsure) == 0 {
		return nil
	}
	if len(lost) > 0 {
		f.fail(lost, "lost at shutdown: the queue did not take it in time")
		for _, r := range lost {
			f.log.Error().Str("id", r.ID).Msg("ack: fast request lost at shutdown")
		}
	}
	for _, id := range unsure {
		f.log.Error().Str("id", id).Msg("ack: fast request may be lost: its last write timed out at shutdown")
	}
	return fmt.Errorf("ack: fast: %d buffered requests not written before the shutdown timeout, %d whose last write timed out", len(lost), len(unsure))
}
