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
	rows sync.Map // meterKey -> *meterRow
}

type meterKey struct{ client, route string }

type meterRow struct {
	accepted atomic.Int64
	bytes    atomic.Int64
	mu       sync.Mutex
	rejected map[int]int64
}

func (m *Meter) row(client, route string) *meterRow {
	k := meterKey{client, route}
	if r, ok := m.rows.Load(k); ok {
		return r.(*meterRow)
	}
	r, _ := m.rows.LoadOrStore(k, &meterRow{})
	return r.(*meterRow)
}

// Count records one answer to a request on route: a status under 300
// counts as accepted, with its bytes; any other as rejected by status.
func (m *Meter) Count(client, route string, status int, bytes int) {
	r := m.row(client, route)
	if status < 300 {
		r.accepted.Add(1)
		r.bytes.Add(int64(bytes))
		return
	}
	r.mu.Lock()
	if r.rejected == nil {
		r.rejected = map[int]int64{}
	}
	r.rejected[status]++
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
		u := RouteUsage{Route: key.route, Accepted: r.accepted.Load(), Bytes: r.bytes.Load(), Rejected: map[string]int64{}}
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
