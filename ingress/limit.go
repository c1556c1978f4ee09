package ingress

import (
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// limitListener admits at most max open connections. One more is answered
// 503 with Retry-After (problem+json) and closed, so a flood of connections
// cannot take the memory of their buffers and bodies.
type limitListener struct {
	net.Listener
	max  int64
	open atomic.Int64

	mu    sync.Mutex
	conns map[*limitConn]struct{}
}

func newLimitListener(ln net.Listener, max int) *limitListener {
	return &limitListener{Listener: ln, max: int64(max), conns: map[*limitConn]struct{}{}}
}

// closeSilent closes the open connections that never sent a byte.
func (l *limitListener) closeSilent() {
	l.mu.Lock()
	var silent []*limitConn
	for c := range l.conns {
		if !c.heard.Load() {
			silent = append(silent, c)
		}
	}
	l.mu.Unlock()
	for _, c := range silent {
		_ = c.Close()
	}
}

// overLimit is the whole answer to a connection past the limit.
var overLimit = func() []byte {
	body := `{"type":"/problems/unavailable","title":"Service Unavailable","status":503,"detail":"too many connections; try later"}`
	return []byte("HTTP/1.1 503 Service Unavailable\r\n" +
		"Content-Type: application/problem+json\r\nRetry-After: 1\r\nConnection: close\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
}()

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > l.max {
			l.open.Add(-1)
			go func() { // never hold up the accept loop on a slow client
				_ = c.SetWriteDeadline(time.Now().Add(time.Second))
				_, _ = c.Write(overLimit)
				_ = c.Close()
			}()
			continue
		}
		lc := &limitConn{Conn: c, l: l}
		l.mu.Lock()
		l.conns[lc] = struct{}{}
		l.mu.Unlock()
		return lc, nil
	}
}

type limitConn struct {
	net.Conn
	l     *limitListener
	once  sync.Once
	heard atomic.Bool // a byte was read
}

func (c *limitConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && !c.heard.Load() {
		c.heard.Store(true)
	}
	return n, err
}

func (c *limitConn) Close() error {
	c.once.Do(func() {
		c.l.open.Add(-1)
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}
