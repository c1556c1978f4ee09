package ingress

import (
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	problems "github.com/sluice-gw/sluice/problem"
)

// limitListener admits at most max open connections, and at most perIP
// from one address (0: no such limit). One more is answered 503 with
// Retry-After (problem+json) and closed, so a flood of connections cannot
// take the memory of their buffers and bodies, and with perIP one client
// cannot take every slot.
type limitListener struct {
	net.Listener
	max   int
	perIP int

	closeOnce sync.Once
	closeErr  error

	mu    sync.Mutex
	conns map[*limitConn]struct{}
	byIP  map[string]int
}

func newLimitListener(ln net.Listener, max, perIP int) *limitListener {
	return &limitListener{Listener: ln, max: max, perIP: perIP,
		conns: map[*limitConn]struct{}{}, byIP: map[string]int{}}
}

func hostOf(a net.Addr) string {
	if h, _, err := net.SplitHostPort(a.String()); err == nil {
		return h
	}
	return a.String()
}

// closeSilent closes the open connections that never sent a byte.
// Close closes the listener once; later calls return nil, so the
// ingress's shutdown and fasthttp's may both close it.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { l.closeErr = l.Listener.Close() })
	return l.closeErr
}

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
	body := problems.New(503, "too many connections; try later").JSON()
	return []byte("HTTP/1.1 503 Service Unavailable\r\n" +
		"Content-Type: application/problem+json\r\nRetry-After: 1\r\nConnection: close\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + string(body))
}()

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		var ip string
		if l.perIP > 0 {
			ip = hostOf(c.RemoteAddr())
		}
		lc := &limitConn{Conn: c, l: l, ip: ip}
		l.mu.Lock()
		over := len(l.conns) >= l.max || (l.perIP > 0 && l.byIP[ip] >= l.perIP)
		if !over {
			l.conns[lc] = struct{}{}
			if l.perIP > 0 {
				l.byIP[ip]++
			}
		}
		l.mu.Unlock()
		if over {
			go func() { // never hold up the accept loop on a slow client
				_ = c.SetWriteDeadline(time.Now().Add(time.Second))
				_, _ = c.Write(overLimit)
				_ = c.Close()
			}()
			continue
		}
		return lc, nil
	}
}

type limitConn struct {
	net.Conn
	l     *limitListener
	ip    string
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
		c.l.mu.Lock()
		delete(c.l.conns, c)
		if c.l.perIP > 0 {
			if c.l.byIP[c.ip]--; c.l.byIP[c.ip] <= 0 {
				delete(c.l.byIP, c.ip)
			}
		}
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

// open counts the connections open now.
func (l *limitListener) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}
