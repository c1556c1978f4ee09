package metering

import (
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// Meter counts, per client and route, the requests accepted, their bytes
// and the answers refused by status: GET /admin/clients. It is this
// process's count since it started.
type Meter struct {
	rows sync.Map     // meterKey -> *meterRow
	n    atomic.Int64 // rows, at most MaxRows
}

// MaxRows bounds the client and route pairs a Meter keeps apart: JWT
// clients are named by their tokens, and a flood of tokens with made-up
// names must not grow the metering (and the metrics and dashboard built
// on it) without end. Past it, new clients are counted together as
// Overflow.
const MaxRows = 10000

// Overflow is the client under which the pairs past MaxRows are counted.
const Overflow = "(other)"

type meterKey struct{ client, route string }

type meterRow struct {
	ok       [3]atomic.Int64 // accepted with 200, 201, 202 (routes[].ack.status)
	bytes    atomic.Int64
	mu       sync.Mutex
	okOther  map[int]int64 // accepted with any other status under 300
	rejected map[int]int64
}

// accepted is every answer under 300.
func (r *meterRow) accepted() int64 {
	n := r.ok[0].Load() + r.ok[1].Load() + r.ok[2].Load()
	r.mu.Lock()
	for _, c := range r.okOther {
		n += c
	}
	r.mu.Unlock()
	return n
}

func (m *Meter) row(client, route string) *meterRow {
	k := meterKey{client, route}
	if r, ok := m.rows.Load(k); ok {
		return r.(*meterRow)
	}
	if m.n.Load() >= MaxRows {
		k.client = Overflow
		if r, ok := m.rows.Load(k); ok {
			return r.(*meterRow)
		}
	}
	r, loaded := m.rows.LoadOrStore(k, &meterRow{})
	if !loaded {
		m.n.Add(1)
	}
	return r.(*meterRow)
}

// Count records one answer to a request on route: a status under 300
// counts as accepted, with its bytes; any other as rejected by status.
// It allocates nothing once the client, route and status have been seen.
func (m *Meter) Count(client, route string, status int, bytes int) {
	r := m.row(client, route)
	if status >= 200 && status <= 202 {
		r.ok[status-200].Add(1)
		r.bytes.Add(int64(bytes))
		return
	}
	r.mu.Lock()
	if status < 300 {
		r.bytes.Add(int64(bytes))
		if r.okOther == nil {
			r.okOther = map[int]int64{}
		}
		r.okOther[status]++
	} else {
		if r.rejected == nil {
			r.rejected = map[int]int64{}
		}
		r.rejected[status]++
	}
	r.mu.Unlock()
}

// ClientUsage is one client's figures (SPEC §6 metering).
type ClientUsage struct {
	Client string       `json:"client"`
	Routes []RouteUsage `json:"routes"`
}

// RouteUsage is one client's figures on one route. Rejected maps an
// HTTP status ("429") to how many answers had it.
type RouteUsage struct {
	Route    string           `json:"route"`
	Accepted int64            `json:"accepted"`
	Bytes    int64            `json:"bytes"`
	Rejected map[string]int64 `json:"rejected"`
}

// Snapshot is every client's figures, clients and routes in name order.
func (m *Meter) Snapshot() []ClientUsage {
	by := map[string][]RouteUsage{}
	m.rows.Range(func(k, v any) bool {
		key, r := k.(meterKey), v.(*meterRow)
		u := RouteUsage{Route: key.route, Accepted: r.accepted(), Bytes: r.bytes.Load(), Rejected: map[string]int64{}}
		r.mu.Lock()
		for s, n := range r.rejected {
			u.Rejected[strconv.Itoa(s)] = n
		}
		r.mu.Unlock()
		by[key.client] = append(by[key.client], u)
		return true
	})
	out := make([]ClientUsage, 0, len(by))
	for c, routes := range by {
		slices.SortFunc(routes, func(a, b RouteUsage) int { return strings.Compare(a.Route, b.Route) })
		out = append(out, ClientUsage{Client: c, Routes: routes})
	}
	slices.SortFunc(out, func(a, b ClientUsage) int { return strings.Compare(a.Client, b.Client) })
	return out
}

// Answers are one client's answers on one route by status, 2xx included:
// what GET /metrics exports.
type Answers struct {
	Client, Route string
	Bytes         int64         // request bodies of the accepted ones
	ByStatus      map[int]int64 // status -> answers
}

// ByStatus is every client's and route's answers by status, sorted by
// client, then route.
func (m *Meter) ByStatus() []Answers {
	var out []Answers
	m.rows.Range(func(k, v any) bool {
		key, r := k.(meterKey), v.(*meterRow)
		a := Answers{Client: key.client, Route: key.route, Bytes: r.bytes.Load(), ByStatus: map[int]int64{}}
		for i := range r.ok {
			if n := r.ok[i].Load(); n > 0 {
				a.ByStatus[200+i] = n
			}
		}
		r.mu.Lock()
		for s, n := range r.okOther {
			a.ByStatus[s] = n
		}
		for s, n := range r.rejected {
			a.ByStatus[s] = n
		}
		r.mu.Unlock()
		out = append(out, a)
		return true
	})
	slices.SortFunc(out, func(a, b Answers) int {
		if c := strings.Compare(a.Client, b.Client); c != 0 {
			return c
		}
		return strings.Compare(a.Route, b.Route)
	})
	return out
}
