package embedded

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/sluice-gw/sluice/broker"
)

// publisher pipelines publishes on one connection and matches JetStream's
// acknowledgements to them: each publish carries a reply subject ending in
// its number, and one subscription takes every reply. It is the part of
// nats.go's async JetStream publish sluice needs, without what it costs
// per message there (a future with two channels, a random reply token, an
// ack parsed as JSON): a confirm is recognised without parsing, only an
// error is decoded.
type publisher struct {
	nc     *nats.Conn
	prefix string        // of reply subjects: "_SLUICE_ACK.<nuid>."
	window chan struct{} // a slot per publish awaiting its confirm

	mu      sync.Mutex
	next    uint64
	pending map[uint64]chan error // by number; each buffered, written once
	active  atomic.Int64          // publishes under way, for drain
}

// acks are the channels confirms are handed over on, reused.
var acks = sync.Pool{New: func() any { return make(chan error, 1) }}

func newPublisher(nc *nats.Conn, window int) (*publisher, error) {
	p := &publisher{
		nc: nc, prefix: "_SLUICE_ACK." + nuid.Next() + ".",
		window: make(chan struct{}, window), pending: map[uint64]chan error{},
	}
	if _, err := nc.Subscribe(p.prefix+"*", p.reply); err != nil {
		return nil, err
	}
	// A confirm lost with the connection never comes: fail the publishes
	// waiting for one (they may have landed; the caller's retry writes the
	// same id again).
	nc.SetDisconnectErrHandler(func(_ *nats.Conn, err error) {
		p.failAll(fmt.Errorf("%w: disconnected: %v", broker.ErrUnavailable, err))
	})
	return p, nil
}

// publish sends m (whose Reply it sets) and waits for its confirm or ctx.
func (p *publisher) publish(ctx context.Context, m *nats.Msg) error {
	select {
	case p.window <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-p.window }()
	p.active.Add(1)
	defer p.active.Add(-1)

	ch := acks.Get().(chan error)
	p.mu.Lock()
	p.next++
	n := p.next
	p.pending[n] = ch
	p.mu.Unlock()
	var buf [64]byte
	m.Reply = string(strconv.AppendUint(append(buf[:0], p.prefix...), n, 36))
	if err := p.nc.PublishMsg(m); err != nil {
		if p.forget(n) {
			acks.Put(ch)
		}
		return err
	}
	select {
	case err := <-ch:
		acks.Put(ch)
		return err
	case <-ctx.Done():
		if p.forget(n) { // else its confirm is being handed over: ch is not reused
			acks.Put(ch)
		}
		return ctx.Err()
	}
}

// forget drops publish n's waiter and reports whether it was still there.
func (p *publisher) forget(n uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.pending[n]; !ok {
		return false
	}
	delete(p.pending, n)
	return true
}

// reply hands a confirm or an error to the publish it answers.
func (p *publisher) reply(m *nats.Msg) {
	n, err := strconv.ParseUint(m.Subject[min(len(p.prefix), len(m.Subject)):], 36, 64)
	if err != nil {
		return
	}
	p.mu.Lock()
	ch, ok := p.pending[n]
	delete(p.pending, n)
	p.mu.Unlock()
	if ok {
		ch <- ackError(m)
	}
}

// ackError is nil for a confirm, else what went wrong: no stream answered
// (a status message without data), or JetStream's error.
func ackError(m *nats.Msg) error {
	if len(m.Data) == 0 {
		if m.Header.Get("Status") == "503" {
			return jetstream.ErrNoStreamResponse
		}
		return jetstream.ErrInvalidJSAck
	}
	// {"stream":"REQUESTS_logs","seq":12}, or {"error":{...}}: stream names
	// cannot hold a quote, so `"error"` appears only in an error.
	if !bytes.Contains(m.Data, []byte(`"error"`)) {
		return nil
	}
	var resp struct {
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil || resp.Error == nil {
		return jetstream.ErrInvalidJSAck
	}
	return resp.Error
}

// failAll fails every publish waiting for its confirm with err.
func (p *publisher) failAll(err error) {
	p.mu.Lock()
	for n, ch := range p.pending {
		delete(p.pending, n)
		ch <- err
	}
	p.mu.Unlock()
}

// drain waits up to d for the publishes under way and reports whether
// they all ended.
func (p *publisher) drain(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for p.active.Load() > 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// waiting is how many publishes wait for their confirm.
func (p *publisher) waiting() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pending)
}
