package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-gw/sluice/backlog"
	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/cluster"
	"github.com/sluice-gw/sluice/config"
	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/metering"
	"github.com/sluice-gw/sluice/problem"
	"github.com/sluice-gw/sluice/workers"
)

// Backlog estimates a topic's backlog (backlog.Monitor).
type Backlog interface {
	Estimate(topic string, rate float64, slots int) backlog.Estimate
}

// Check is one readiness probe, named for the answer.
type Check struct {
	Name string
	Ping func(context.Context) error
}

// Backends reports and tunes the backends' worker pools (workers.Manager).
type Backends interface {
	Names() []string
	Status(name string) (workers.Status, bool)
	Tune(name string, change func(*workers.Settings)) bool
}

// DeadLetters lists and replays dead letters (workers.DeadLetters); both
// answer workers.ErrUnknownBackend for a name that is not configured.
type DeadLetters interface {
	List(ctx context.Context, backend string, limit int) ([]workers.DeadLetter, error)
	Replay(ctx context.Context, backend string, ids []string) (int, error)
}

// Cluster keeps what PATCH changes for every process of the deployment,
// and every worker process's figures (cluster.Node).
type Cluster interface {
	// Tune stores t's fields for backend name and applies them in every
	// process; it returns the tuning now in force.
	Tune(ctx context.Context, name string, t cluster.Tuning) (cluster.Tuning, error)
	// Reset takes backend name back to its config in every process.
	Reset(ctx context.Context, name string) error
	// Tuning is backend name's tuning in force; false: the config alone.
	Tuning(name string) (cluster.Tuning, bool)
	// View is every worker's figures of backend name; false: none lately.
	View(name string) (cluster.View, bool)
}

// Meter is the per-client metering of the ingress (ingress.Meter).
type Meter interface {
	Snapshot() []metering.ClientUsage
}

// Handler serves the admin API.
type Handler struct {
	// Meter answers GET /admin/clients; nil in a process without the
	// ingress role, which meters nothing.
	Meter Meter
	// Records answers GET /admin/requests/<id>: the result store.
	Records  Records
	Token    string
	Backends Backends
	Dead     DeadLetters
	Backlog  Backlog
	Ready    []Check
	// History answers GET /admin/history; the gateway runs it.
	History *History
	// Cluster makes PATCH and DELETE .../tuning reach every process and
	// adds every worker's figures to /admin/backends; nil: a PATCH tunes
	// this process alone, until it stops.
	Cluster Cluster
	mux     *http.ServeMux

	// Metrics answers GET /metrics (package metrics); nil with
	// metrics: false, and then /metrics is 404.
	Metrics http.Handler
}

// New builds the handler. pprof serves Go's profiles under /debug/pprof/.
func New(token string, pprofOn bool, backends Backends, dead DeadLetters, backlog Backlog, ready []Check) *Handler {
	h := &Handler{Token: token, Backends: backends, Dead: dead, Backlog: backlog, Ready: ready, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, _ *http.Request) {
		writeJSON(rw, 200, map[string]string{"status": "ok"})
	})
	h.mux.HandleFunc("GET /readyz", h.readyz)
	h.mux.HandleFunc("GET /admin/backends", h.listBackends)
	h.mux.HandleFunc("GET /admin/backends/{name}", h.getBackend)
	h.mux.HandleFunc("PATCH /admin/backends/{name}", h.patchBackend)
	h.mux.HandleFunc("DELETE /admin/backends/{name}/tuning", h.resetBackend)
	h.mux.HandleFunc("GET /admin/dead-letters", h.listDead)
	h.mux.HandleFunc("POST /admin/dead-letters/replay", h.replay)
	h.mux.HandleFunc("GET /admin/clients", h.clients)
	h.mux.HandleFunc("GET /admin/requests/{id}", h.request)
	h.mux.HandleFunc("GET /admin/history", h.history)
	h.mux.HandleFunc("GET /{$}", h.index)
	h.mux.HandleFunc("GET /ui/", h.static)
	h.mux.HandleFunc("GET /metrics", h.metrics)
	if pprofOn {
		h.mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		h.mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		h.mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return h
}

func (h *Handler) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	if h.Token == "" && !config.Loopback(r.Host) && r.URL.Path != "/healthz" {
		// Without a token the admin port listens on loopback only (check
		// refuses more), so a Host naming anything else is a page whose
		// name was rebound to 127.0.0.1 (DNS rebinding): refused, or it
		// could read and change everything as the same origin.
		problem.Write(rw, 421, "the admin API without admin_token answers only requests to localhost or a loopback address")
		return
	}
	if crossSite(r) {
		problem.Write(rw, 403, "the admin API takes no changes from another site's page")
		return
	}
	if h.Token != "" && !public(r) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(h.Token)) != 1 {
			rw.Header().Set("WWW-Authenticate", `Bearer realm="sluice-admin"`)
			problem.Write(rw, 401, "missing or wrong admin token")
			return
		}
	}
	// Unknown paths and methods answer in the same dialect as everything
	// else (the mux's own answers are plain text).
	if _, pattern := h.mux.Handler(r); pattern == "" {
		var allow []string
		for _, m := range []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"} {
			r2 := r.Clone(r.Context())
			r2.Method = m
			if _, p := h.mux.Handler(r2); p != "" {
				allow = append(allow, m)
			}
		}
		if len(allow) == 0 {
			problem.Write(rw, 404, "no admin endpoint at "+r.URL.Path)
			return
		}
		rw.Header().Set("Allow", strings.Join(allow, ", "))
		problem.Write(rw, 405, r.URL.Path+" accepts "+strings.Join(allow, ", "))
		return
	}
	h.mux.ServeHTTP(rw, r)
}

func writeJSON(rw http.ResponseWriter, status int, v any) {
	b, _ := job.Marshal(v) // the API's own types always encode
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(status)
	_, _ = rw.Write(append(b, '\n'))
}

func (h *Handler) readyz(rw http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	status, out := 200, map[string]string{}
	for _, c := range h.Ready {
		if err := c.Ping(ctx); err != nil {
			status, out[c.Name] = 503, "unavailable"
		} else {
			out[c.Name] = "ok"
		}
	}
	writeJSON(rw, status, out)
}

// Stats are a backend's live figures.
type Stats struct {
	InFlight       int     `json:"in_flight"`
	QueueDepth     int64   `json:"queue_depth"`
	DrainPerSecond float64 `json:"drain_per_second"`
	BacklogSeconds float64 `json:"backlog_seconds"` // how long a request queued now waits
	Stalled        bool    `json:"stalled"`         // a backlog that has not moved for a while
	Breaker        string  `json:"breaker"`
	Share          float64 `json:"share"` // this process's part of rate and concurrency
	Attempts       int64   `json:"attempts"`
	Succeeded      int64   `json:"succeeded"`
	Failed         int64   `json:"failed"`
	Retried        int64   `json:"retried"`
	DeadLettered   int64   `json:"dead_lettered"`

	// ConcurrencyLimit is this process's cap on deliveries in flight now:
	// concurrency after the share, or with adaptive the limit found.
	ConcurrencyLimit int `json:"concurrency_limit"`
}

// Backend is the object of GET and PATCH /admin/backends.
type Backend struct {
	Name        string  `json:"name"`
	Rate        float64 `json:"rate"`
	Burst       int     `json:"burst"`
	Concurrency int     `json:"concurrency"`
	Adaptive    bool    `json:"adaptive"`
	Paused      bool    `json:"paused"`
	Stats       Stats   `json:"stats"` // this process's
	// Tuning is what PATCH set over the config, for every process; absent
	// while the config alone applies.
	Tuning *cluster.Tuning `json:"tuning,omitempty"`
	// Cluster is every worker process's figures and their sums; absent
	// while none reported lately.
	Cluster *cluster.View `json:"cluster,omitempty"`
}

func (h *Handler) backend(name string) (Backend, bool) {
	st, ok := h.Backends.Status(name)
	if !ok {
		return Backend{}, false
	}
	b := describe(name, st, h.Backlog)
	if h.Cluster != nil {
		if t, ok := h.Cluster.Tuning(name); ok {
			b.Tuning = &t
		}
		if v, ok := h.Cluster.View(name); ok {
			b.Cluster = &v
		}
	}
	return b, true
}

// describe is backend name's object from its status and backlog, for the
// API and the history alike.
func describe(name string, st workers.Status, bl Backlog) Backend {
	est := bl.Estimate(broker.RequestTopic(name), st.Rate, st.Concurrency)
	depth, drain, backlog := est.Depth, est.Drain, math.Round(est.Wait.Seconds()*10)/10
	return Backend{
		Name: name, Rate: st.Rate, Burst: st.Burst, Concurrency: st.Concurrency, Adaptive: st.Adaptive, Paused: st.Paused,
		Stats: Stats{
			InFlight: st.InFlight, QueueDepth: depth, DrainPerSecond: math.Round(drain*10) / 10,
			BacklogSeconds: backlog, Stalled: est.Stalled, Breaker: st.Breaker, Share: math.Round(st.Share*1000) / 1000,
			Attempts: st.Attempts, Succeeded: st.Succeeded, Failed: st.Failed,
			Retried: st.Retried, DeadLettered: st.DeadLettered, ConcurrencyLimit: st.Limit,
		},
	}
}

func (h *Handler) listBackends(rw http.ResponseWriter, _ *http.Request) {
	out := []Backend{}
	for _, n := range h.Backends.Names() {
		b, _ := h.backend(n)
		out = append(out, b)
	}
	writeJSON(rw, 200, map[string]any{"backends": out})
}

func (h *Handler) getBackend(rw http.ResponseWriter, r *http.Request) {
	b, ok := h.backend(r.PathValue("name"))
	if !ok {
		problem.Write(rw, 404, fmt.Sprintf("unknown backend %q", r.PathValue("name")))
		return
	}
	writeJSON(rw, 200, b)
}

// Patch is the body of PATCH /admin/backends/<name>; absent fields stay.
type Patch struct {
	Rate        *float64 `json:"rate"`
	Burst       *int     `json:"burst"`
	Concurrency *int     `json:"concurrency"`
	Adaptive    *bool    `json:"adaptive"`
	Paused      *bool    `json:"paused"`
}

// Bounds of a PATCH: past them a value means nothing but a mistake.
const (
	maxRate        = 1e9
	maxBurst       = 1_000_000_000
	maxConcurrency = 100_000
)

// Validate lists every bad field.
func (p Patch) Validate() error {
	var errs []error
	if p.Rate != nil && (*p.Rate < 0 || math.IsNaN(*p.Rate) || math.IsInf(*p.Rate, 0)) {
		errs = append(errs, errors.New("rate: must be >= 0 (0 = unlimited)"))
	}
	if p.Rate != nil && *p.Rate > maxRate {
		errs = append(errs, fmt.Errorf("rate: must be at most %g", float64(maxRate)))
	}
	if p.Burst != nil && (*p.Burst < 1 || *p.Burst > maxBurst) {
		errs = append(errs, fmt.Errorf("burst: must be 1 to %d", maxBurst))
	}
	if p.Concurrency != nil && (*p.Concurrency < 1 || *p.Concurrency > maxConcurrency) {
		errs = append(errs, fmt.Errorf("concurrency: must be 1 to %d", maxConcurrency))
	}
	return errors.Join(errs...)
}

func (h *Handler) patchBackend(rw http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, ok := h.Backends.Status(name); !ok {
		problem.Write(rw, 404, fmt.Sprintf("unknown backend %q", name))
		return
	}
	var p Patch
	dec := json.NewDecoder(http.MaxBytesReader(rw, r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil || dec.More() {
		detail := "body must be one JSON object with any of rate, burst, concurrency, adaptive, paused"
		if err != nil {
			detail += ": " + err.Error()
		}
		problem.Write(rw, 400, detail)
		return
	}
	if err := p.Validate(); err != nil {
		problem.Write(rw, 400, strings.ReplaceAll(err.Error(), "\n", "; "))
		return
	}
	t := cluster.Tuning{Rate: p.Rate, Burst: p.Burst, Concurrency: p.Concurrency, Adaptive: p.Adaptive, Paused: p.Paused}
	if h.Cluster != nil {
		if !t.Empty() {
			if _, err := h.Cluster.Tune(r.Context(), name, t); err != nil {
				rw.Header().Set("Retry-After", "1")
				problem.Write(rw, 503, "the change could not be stored for every process, so nothing changed; try again")
				return
			}
		}
	} else {
		h.Backends.Tune(name, func(set *workers.Settings) { *set = Over(*set, t) })
	}
	b, _ := h.backend(name)
	writeJSON(rw, 200, b)
}

// Over is settings s with the fields t sets in their place: a PATCH in
// this process alone, or a stored tuning over a backend's config in every
// process (gateway).
func Over(s workers.Settings, t cluster.Tuning) workers.Settings {
	if t.Rate != nil {
		s.Rate = *t.Rate
	}
	if t.Burst != nil {
		s.Burst = *t.Burst
	}
	if t.Concurrency != nil {
		s.Concurrency = *t.Concurrency
	}
	if t.Adaptive != nil {
		s.Adaptive = *t.Adaptive
	}
	if t.Paused != nil {
		s.Paused = *t.Paused
	}
	return s
}

// resetBackend answers DELETE /admin/backends/<name>/tuning: every process
// goes back to the config's settings for the backend.
func (h *Handler) resetBackend(rw http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, ok := h.Backends.Status(name); !ok {
		problem.Write(rw, 404, fmt.Sprintf("unknown backend %q", name))
		return
	}
	if h.Cluster == nil {
		problem.Write(rw, 404, "this process keeps no tuning")
		return
	}
	if err := h.Cluster.Reset(r.Context(), name); err != nil {
		rw.Header().Set("Retry-After", "1")
		problem.Write(rw, 503, "the tuning could not be dropped for every process, so nothing changed; try again")
		return
	}
	b, _ := h.backend(name)
	writeJSON(rw, 200, b)
}

func (h *Handler) listDead(rw http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			problem.Write(rw, 400, "limit must be a whole number from 1 to 10000")
			return
		}
		limit = n
	}
	names := h.Backends.Names()
	if b := q.Get("backend"); b != "" {
		names = []string{b}
	}
	items := []workers.DeadLetter{}
	for _, n := range names {
		if len(items) >= limit {
			break
		}
		got, err := h.Dead.List(r.Context(), n, limit-len(items))
		if errors.Is(err, workers.ErrUnknownBackend) {
			problem.Write(rw, 404, fmt.Sprintf("unknown backend %q", n))
			return
		}
		if err != nil {
			problem.Write(rw, 503, "the broker is unavailable")
			return
		}
		items = append(items, got...)
	}
	writeJSON(rw, 200, map[string]any{"items": items})
}

func (h *Handler) replay(rw http.ResponseWriter, r *http.Request) {
	var body struct {
		Backend string   `json:"backend"`
		IDs     []string `json:"ids"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(rw, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil || body.Backend == "" {
		problem.Write(rw, 400, `body must be {"backend":"<name>","ids":["..."]} (no ids = all)`)
		return
	}
	// A client that hangs up does not cut a replay half way.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 2*time.Minute)
	defer cancel()
	n, err := h.Dead.Replay(ctx, body.Backend, body.IDs)
	switch {
	case errors.Is(err, workers.ErrUnknownBackend):
		problem.Write(rw, 404, fmt.Sprintf("unknown backend %q", body.Backend))
	case err != nil:
		problem.Write(rw, 503, fmt.Sprintf("replay stopped after %d: the broker is unavailable", n))
	default:
		writeJSON(rw, 200, map[string]int{"replayed": n})
	}
}

// clients answers GET /admin/clients (SPEC §6 metering): per client and
// route, what this process accepted and refused since it started.
func (h *Handler) clients(rw http.ResponseWriter, _ *http.Request) {
	usage := []metering.ClientUsage{}
	if h.Meter != nil {
		usage = h.Meter.Snapshot()
	}
	writeJSON(rw, 200, map[string]any{"clients": usage})
}

// historyBody is the answer of GET /admin/history.
type historyBody struct {
	IntervalSeconds float64          `json:"interval_seconds"`
	WindowSeconds   float64          `json:"window_seconds"`
	Backends        []BackendHistory `json:"backends"`
}

// history answers GET /admin/history[?since=<RFC 3339 time>]: every
// backend's points of the last minutes, or only those after since (the
// last at a client has).
func (h *Handler) history(rw http.ResponseWriter, r *http.Request) {
	if h.History == nil {
		problem.Write(rw, 404, "this process keeps no history")
		return
	}
	var since time.Time
	if v := r.URL.Query().Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			problem.Write(rw, 400, "since must be an RFC 3339 time, such as a point's at")
			return
		}
		since = t
	}
	writeJSON(rw, 200, historyBody{IntervalSeconds: h.History.Interval().Seconds(),
		WindowSeconds: h.History.Window().Seconds(), Backends: h.History.Snapshot(since)})
}

// metrics answers GET /metrics: the Prometheus text format, or 404 with
// metrics: false.
func (h *Handler) metrics(rw http.ResponseWriter, r *http.Request) {
	if h.Metrics == nil {
		problem.Write(rw, 404, "metrics are off in this process's config (metrics: false)")
		return
	}
	h.Metrics.ServeHTTP(rw, r)
}
