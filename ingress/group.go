package ingress

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/wire"
)

// GroupOptions tune group commit: requests that arrive together share one
// broker write.
type GroupOptions struct {
	// MaxRequests is the most requests one write carries; 1 turns group
	// commit off (one message per request).
	MaxRequests int
	// MaxBytes bounds a write's size: the broker's message limit less room
	// for its framing. A request larger than this goes alone.
	MaxBytes int
	// Writes is how many writes per topic may be under way at once. A
	// request arriving while fewer are under way is written at once, alone
	// or with those that arrived with it; otherwise it waits for the next
	// write, with the others arriving meanwhile. So an idle gateway never
	// waits, and a busy one packs as many as arrive during one write.
	Writes int
	// Timeout bounds each write.
	Timeout time.Duration
	// Packed, when set, learns how many requests each write carried.
	Packed func(topic string, requests int)
}

// grouper is a broker.Publisher that packs concurrent publishes to one
// topic into one message (wire.Pack). Each Publish returns the outcome of
// the write that carried its message.
type grouper struct {
	pub  broker.Publisher
	opts GroupOptions

	mu     sync.Mutex
	topics map[string]*topicGroup
}

type topicGroup struct {
	open    *group // collecting; nil when none
	writing int    // writes under way
}

// group is one write's messages, and its outcome once done is closed.
type group struct {
	msgs []broker.Message
	size int
	// deadline bounds the write: Timeout after the first request came, so
	// no request waits longer for its outcome, however long the write
	// before it took.
	deadline time.Time
	done     chan struct{}
	err      error   // the write's outcome
	errs     []error // per message, when they were written one by one
}

func newGrouper(pub broker.Publisher, opts GroupOptions) *grouper {
	return &grouper{pub: pub, opts: opts, topics: map[string]*topicGroup{}}
}

// Publish writes msg, with what arrives alongside, and returns once the
// write that holds it is confirmed or failed (within Timeout of the
// group's first request), or ctx ends (then it may still land).
func (g *grouper) Publish(ctx context.Context, topic string, msg broker.Message) error {
	size := wire.PackedSize(msg)
	if g.opts.MaxRequests <= 1 || size+wire.BatchOverhead > g.opts.MaxBytes {
		ctx, cancel := context.WithTimeout(ctx, g.opts.Timeout)
		defer cancel()
		return g.pub.Publish(ctx, topic, msg)
	}
	g.mu.Lock()
	t := g.topics[topic]
	if t == nil {
		t = &topicGroup{}
		g.topics[topic] = t
	}
	if t.open != nil && t.open.size+size > g.opts.MaxBytes {
		// It does not fit: the open group goes now, and msg opens the next.
		full := t.open
		t.open = nil
		t.writing++
		go g.write(topic, t, full)
	}
	if t.open == nil {
		t.open = &group{done: make(chan struct{}), size: wire.BatchOverhead, deadline: time.Now().Add(g.opts.Timeout)}
	}
	grp, i := t.open, len(t.open.msgs)
	grp.msgs = append(grp.msgs, msg)
	grp.size += size
	switch {
	case t.writing < g.opts.Writes:
		t.open = nil
		t.writing++
		g.mu.Unlock()
		g.write(topic, t, grp)
	case len(grp.msgs) >= g.opts.MaxRequests:
		t.open = nil
		t.writing++
		g.mu.Unlock()
		go g.write(topic, t, grp)
	default:
		g.mu.Unlock()
	}
	select {
	case <-grp.done:
	case <-ctx.Done():
		select {
		case <-grp.done: // the outcome is known: it says more
		default:
			return fmt.Errorf("%w: %w", broker.ErrUnavailable, ctx.Err())
		}
	}
	if grp.errs != nil {
		return grp.errs[i]
	}
	return grp.err
}

// write writes grp, then the group that opened meanwhile, if any (the
// writer that finishes hands its slot on: one caller is not made to wait
// for another write than its own).
func (g *grouper) write(topic string, t *topicGroup, grp *group) {
	ctx, cancel := context.WithDeadline(context.Background(), grp.deadline)
	grp.err = g.pub.Publish(ctx, topic, wire.Pack(grp.msgs))
	if errors.Is(grp.err, broker.ErrUnavailable) && ctx.Err() != nil && !errors.Is(grp.err, context.DeadlineExceeded) {
		// Timed out, so it may have landed: say so, whatever the broker said.
		grp.err = fmt.Errorf("%w (%w)", grp.err, context.DeadlineExceeded)
	}
	if errors.Is(grp.err, broker.ErrTooLarge) && len(grp.msgs) > 1 {
		// The broker's limit is below what MaxBytes assumed: each goes alone.
		grp.errs = make([]error, len(grp.msgs))
		var wg sync.WaitGroup
		for i, m := range grp.msgs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				grp.errs[i] = g.pub.Publish(ctx, topic, m)
			}()
		}
		wg.Wait()
	}
	cancel()
	if g.opts.Packed != nil && grp.err == nil {
		g.opts.Packed(topic, len(grp.msgs))
	}
	close(grp.done)

	g.mu.Lock()
	next := t.open
	if next != nil {
		t.open = nil
		g.mu.Unlock()
		go g.write(topic, t, next)
		return
	}
	t.writing--
	g.mu.Unlock()
}
