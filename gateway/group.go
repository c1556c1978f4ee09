package gateway

import (
	"context"
	"sync"
)

// group owns the gateway's goroutines. Each runs under a context of its
// own, so the shutdown can stop them one at a time in its order; the first
// one that returns before it was asked to is reported on exited, which ends
// Run.
type group struct {
	mu     sync.Mutex
	procs  []*proc
	exited chan *proc
}

// proc is one goroutine of the group.
type proc struct {
	name     string
	cancel   context.CancelFunc
	done     chan struct{}
	err      error
	stopped  bool // asked to stop: its return is expected
	reported bool // its early exit is what Gateway.Run returns
}

func newGroup() *group { return &group{exited: make(chan *proc, 1)} }

// Go runs f under its own context, derived from no other: only Stop ends it.
func (g *group) Go(name string, f func(context.Context) error) *proc {
	ctx, cancel := context.WithCancel(context.Background())
	p := &proc{name: name, cancel: cancel, done: make(chan struct{})}
	g.mu.Lock()
	g.procs = append(g.procs, p)
	g.mu.Unlock()
	go func() {
		defer close(p.done)
		p.err = f(ctx)
		g.mu.Lock()
		early := !p.stopped
		g.mu.Unlock()
		if early {
			select {
			case g.exited <- p:
			default: // one early exit is enough to stop the gateway
			}
		}
	}()
	return p
}

// Stop asks p to end and waits until it has; it returns p's error. A nil
// p (a role this process does not play) stops at once.
func (g *group) Stop(p *proc) error {
	if p == nil {
		return nil
	}
	g.mu.Lock()
	p.stopped = true
	g.mu.Unlock()
	p.cancel()
	<-p.done
	return p.err
}

// StopAll stops what is still running, last started first: the safety net
// behind the ordered shutdown, should Run ever leave early with parts
// running (a panic in a Ready callback, say).
func (g *group) StopAll() {
	g.mu.Lock()
	procs := append([]*proc(nil), g.procs...)
	g.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		_ = g.Stop(procs[i])
	}
}
