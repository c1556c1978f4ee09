package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/sluice-gw/sluice/admin"
	"github.com/sluice-gw/sluice/auth"
	"github.com/sluice-gw/sluice/backlog"
	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/broker/embedded"
	"github.com/sluice-gw/sluice/broker/kafka"
	"github.com/sluice-gw/sluice/broker/rabbitmq"
	"github.com/sluice-gw/sluice/cluster"
	"github.com/sluice-gw/sluice/config"
	"github.com/sluice-gw/sluice/ingress"
	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/metrics"
	"github.com/sluice-gw/sluice/ratelimit"
	"github.com/sluice-gw/sluice/results"
	"github.com/sluice-gw/sluice/results/bolt"
	"github.com/sluice-gw/sluice/results/collector"
	redisstore "github.com/sluice-gw/sluice/results/redis"
	"github.com/sluice-gw/sluice/tracing"
	"github.com/sluice-gw/sluice/workers"
)

// Role is one part of the gateway a process runs.
type Role string

// The roles. A process runs all three unless told otherwise; the embedded
// broker lives inside one process, so it always does.
const (
	Ingress   Role = "ingress"   // the client port: submit and poll
	Worker    Role = "worker"    // deliveries to the backends
	Collector Role = "collector" // outcomes from the result queue into the store
)

// AllRoles is what a process runs by default.
var AllRoles = []Role{Ingress, Worker, Collector}

// ErrRoles is returned by ParseRoles and New for roles that cannot run.
var ErrRoles = errors.New("roles")

// ParseRoles reads a comma-separated list of roles.
func ParseRoles(s string) ([]Role, error) {
	var roles []Role
	for _, r := range strings.Split(s, ",") {
		r := Role(strings.TrimSpace(r))
		if !slices.Contains(AllRoles, r) {
			return nil, fmt.Errorf("%w: unknown role %q (want ingress, worker, collector)", ErrRoles, r)
		}
		if !slices.Contains(roles, r) {
			roles = append(roles, r)
		}
	}
	return roles, nil
}

// Options are what New needs beyond the config.
type Options struct {
	Roles []Role // nil: AllRoles
	Log   zerolog.Logger
	// Ready, when set, is told the addresses Run bound (tests listen on
	// port 0) once every part has started.
	Ready func(ingress, admin string)
	// Version is the service.version of traces.
	Version string
}

// Gateway is one sluice process. Create it with New, then Run it.
type Gateway struct {
	cfg     *config.Config
	roles   []Role
	log     zerolog.Logger
	ready   func(ingress, admin string)
	version string
}

// New checks that the roles can run with cfg. It starts nothing and opens
// nothing.
func New(cfg *config.Config, opts Options) (*Gateway, error) {
	roles := opts.Roles
	if roles == nil {
		roles = AllRoles
	}
	if len(roles) != len(AllRoles) {
		switch {
		case cfg.Broker.Kind == "embedded":
			return nil, fmt.Errorf("%w: the embedded broker lives inside one process, so it runs all roles; use kafka or rabbitmq to split them", ErrRoles)
		case cfg.Results.Store != "redis":
			return nil, fmt.Errorf("%w: processes with separate roles share outcomes through results.store: redis", ErrRoles)
		}
	}
	return &Gateway{cfg: cfg, roles: roles, log: opts.Log, ready: opts.Ready, version: opts.Version}, nil
}

func (g *Gateway) has(r Role) bool { return slices.Contains(g.roles, r) }

// parts is what Run opened and built, for the shutdown to stop in order.
type parts struct {
	grp                       *group
	broker                    broker.Broker
	store                     results.Store
	ingress                   *ingress.Server
	manager                   *workers.Manager
	node                      *cluster.Node
	admin                     *http.Server
	collector                 *collector.Collector
	monitor, workers, collect *proc
	historyProc               *proc
	adminProc, ingressProc    *proc
	storeProc, brokerProc     *proc
	tracing                   *tracing.Tracer // nil: tracing off
	clusterProc               *proc
}

// Run runs the gateway until ctx ends or a part stops by itself, then
// shuts down in order within shutdown_timeout. Nothing that got a 202 is
// lost by it.
func (g *Gateway) Run(ctx context.Context) error {
	cfg, log := g.cfg, g.log

	// Bind the listeners first: a port in use fails before anything starts.
	var ingLn, admLn net.Listener
	var err error
	if g.has(Ingress) {
		if ingLn, err = net.Listen("tcp", cfg.Listen); err != nil {
			return fmt.Errorf("listen: %w", err)
		}
		defer ingLn.Close()
	}
	if admLn, err = net.Listen("tcp", cfg.AdminListen); err != nil {
		return fmt.Errorf("admin_listen: %w", err)
	}
	defer admLn.Close()

	p := &parts{grp: newGroup()}
	if p.broker, err = g.openBroker(ctx); err != nil {
		return err
	}
	brokerClosed := false
	defer func() {
		if !brokerClosed {
			_ = p.broker.Close()
		}
	}()
	if p.store, err = g.openStore(); err != nil {
		return err
	}
	defer p.store.Close()
	// Where PATCHed settings and the workers' figures are shared (Redis, or
	// a file beside the embedded result store).
	clusterStore, sharedCluster, err := g.openCluster()
	if err != nil {
		return err
	}
	defer clusterStore.Close()
	defer p.grp.StopAll() // before the closes above: Close comes after Run

	topics := make([]string, len(cfg.Backends))
	for i, b := range cfg.Backends {
		topics[i] = broker.RequestTopic(b.Name)
	}
	monitor := backlog.New(p.broker, topics, 500*time.Millisecond)
	p.manager = workers.NewManager(cfg, p.broker, log)
	p.manager.SkipSettled(settledIn(p.store))
	p.manager.LearnPacking(monitor.Packed) // a worker-only process counts requests too
	p.node = g.newNode(clusterStore, p.manager, admLn.Addr().String())
	if sharedCluster {
		monitor.DrainFrom(drainOf(p.node, p.manager.Names())) // RabbitMQ counts this process's acks only
	}
	if g.has(Ingress) {
		if p.ingress, err = ingress.New(cfg, p.broker, p.store, monitor, log); err != nil {
			return err
		}
		// A JWKS URL is fetched now; one that is down does not stop the
		// start (tokens get 503 until its keys come).
		authn, err := auth.New(ctx, cfg.Auth, cfg.Dir, log)
		if err != nil {
			return err
		}
		defer authn.Close()
		if authn != nil {
			p.ingress.SetAuth(authn)
		}
		if rc := cfg.Results.Redis; cfg.Results.Store == "redis" && rc != nil {
			// One rate_limit budget for every ingress process: a GCRA in
			// the result store's Redis. Its own client: a call is bounded
			// by 100 ms and never retried (a retry could charge twice).
			rdb := goredis.NewClient(&goredis.Options{Addr: rc.Addr, Password: rc.Password, DB: rc.DB,
				ContextTimeoutEnabled: true, MaxRetries: -1})
			defer rdb.Close()
			prefix := rc.KeyPrefix
			if prefix == "" {
				prefix = redisstore.DefaultKeyPrefix
			}
			p.ingress.SetRateLimiter(ratelimit.NewRedis(rdb, prefix, ratelimit.NewLocal(), log))
		}
	}
	adminAPI := admin.New(cfg.AdminToken, cfg.AdminPprof, p.manager,
		workers.NewDeadLetters(p.broker, p.manager.Names(), p.store, log), monitor, []admin.Check{
			{Name: "broker", Ping: p.broker.Ping}, {Name: "results", Ping: p.store.Ping},
		})
	adminAPI.Records = p.store // GET /admin/requests/<id>
	if p.ingress != nil {
		adminAPI.Meter = p.ingress.Meter()
	}
	// The dashboard's charts: the last minutes of every backend's figures.
	adminAPI.History = admin.NewHistory(p.manager, monitor, admin.HistoryInterval, admin.HistoryWindow)
	adminAPI.Cluster = p.node // PATCH for every process; every worker's figures
	if sharedCluster {
		adminAPI.History.Cluster = p.node
	}
	if cfg.MetricsOn() {
		adminAPI.Metrics = newMetrics(p.manager, monitor, p.ingress, g.has(Worker))
	}
	p.admin = &http.Server{Handler: adminAPI, ReadHeaderTimeout: 10 * time.Second}

	p.collector = collector.New(p.broker, p.store, log, collector.Options{Keep: job.ParseKeep(cfg.Results.KeepResponse)})
	if err := g.startTracing(p); err != nil {
		return err
	}
	defer func() { // a Run cut short before its stop; the stop did it already
		tctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = p.tracing.Shutdown(tctx)
	}()

	// Start, in the reverse of the order of the stop.
	p.brokerProc = p.grp.Go("broker", p.broker.Run)
	p.storeProc = p.grp.Go("results", p.store.Run)
	p.monitor = p.grp.Go("monitor", monitor.Run)
	g.restoreTuning(ctx, p.node) // before the workers: a restarted worker starts tuned
	p.clusterProc = p.grp.Go("cluster", p.node.Run)
	if g.has(Collector) {
		p.collect = p.grp.Go("collector", p.collector.Run)
	}
	if g.has(Worker) {
		p.workers = p.grp.Go("worker", p.manager.Run)
	}
	p.historyProc = p.grp.Go("history", adminAPI.History.Run)
	p.adminProc = p.grp.Go("admin", func(ctx context.Context) error { return serveHTTP(ctx, p.admin, admLn) })
	ingAddr := ""
	if p.ingress != nil {
		p.ingressProc = p.grp.Go("ingress", func(ctx context.Context) error { return g.serveIngress(ctx, p.ingress, ingLn) })
		ingAddr = ingLn.Addr().String()
	}
	log.Info().Str("listen", ingAddr).Str("admin", admLn.Addr().String()).
		Strs("roles", roleNames(g.roles)).Str("broker", cfg.Broker.Kind).Str("ack", cfg.Ack).Msg("sluice is up")
	if g.ready != nil {
		g.ready(ingAddr, admLn.Addr().String())
	}

	var runErr error
	select {
	case <-ctx.Done():
	case q := <-p.grp.exited:
		runErr = fmt.Errorf("%s: %w", q.name, orStopped(q.err))
		q.reported = true // Run returns its error: the stop need not log it
	}
	g.stop(p)
	brokerClosed = true
	if err := p.broker.Close(); err != nil {
		log.Error().Err(err).Msg("broker close")
	}
	log.Info().Msg("stopped")
	return runErr
}

// stop is the order of the shutdown, under one deadline (SPEC: within
// shutdown_timeout): intake and the ack: fast buffer get the first half,
// deliveries in flight finish until three quarters, then the collector
// stores the last outcomes and the rest stops.
func (g *Gateway) stop(p *parts) {
	log := g.log
	log.Info().Msg("shutting down")
	start := time.Now()
	budget := g.cfg.ShutdownTimeout.D()
	deadline := start.Add(budget)
	sctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if p.ingress != nil {
		ictx, icancel := context.WithDeadline(sctx, start.Add(budget/2))
		if err := p.ingress.Shutdown(ictx); err != nil {
			log.Error().Err(err).Msg("ingress shutdown")
		}
		icancel()
		g.logStop(p.grp, p.ingressProc) // Serve has returned
	}
	p.manager.StopBy(start.Add(budget*3/4), deadline.Add(-time.Second))
	g.logStop(p.grp, p.workers)                    // pools stop fetching, finish or hand back in-flight work
	traced := g.flushTraces(sctx, p)               // no span starts any more; waited for last
	p.collector.StopBy(deadline.Add(-time.Second)) // it stores the outcomes the workers just published
	g.logStop(p.grp, p.collect)
	g.logStop(p.grp, p.monitor)
	_ = p.admin.Shutdown(sctx)
	g.logStop(p.grp, p.adminProc)
	g.logStop(p.grp, p.clusterProc) // after the admin API, which tunes through it
	g.logStop(p.grp, p.historyProc) // after the admin API, which reads it
	g.logStop(p.grp, p.storeProc)   // writes what it still holds
	g.logStop(p.grp, p.brokerProc)  // then Gateway.Run closes the broker
	<-traced
}

func (g *Gateway) logStop(grp *group, p *proc) {
	if err := grp.Stop(p); err != nil && !p.reported {
		g.log.Error().Err(err).Str("role", p.name).Msg("stopped with an error")
	}
}

// serveIngress serves ing on ln until it is shut down. The ordered stop
// shuts it down first; a stop out of that order (StopAll) does it here.
func (g *Gateway) serveIngress(ctx context.Context, ing *ingress.Server, ln net.Listener) error {
	served := make(chan error, 1)
	go func() { served <- ing.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), g.cfg.ShutdownTimeout.D()/2)
		defer cancel()
		if err := ing.Shutdown(sctx); err != nil {
			g.log.Error().Err(err).Msg("ingress shutdown")
		}
		return <-served
	}
}

// serveHTTP serves srv on ln until ctx ends; the shutdown closes srv.
func serveHTTP(ctx context.Context, srv *http.Server, ln net.Listener) error {
	err := make(chan error, 1)
	go func() { err <- srv.Serve(ln) }()
	select {
	case e := <-err:
		if errors.Is(e, http.ErrServerClosed) {
			return nil // shut down by the gateway's stop
		}
		return e
	case <-ctx.Done():
		_ = srv.Close()
		<-err
		return nil
	}
}

func orStopped(err error) error {
	if err == nil {
		return errors.New("stopped")
	}
	return err
}

func roleNames(roles []Role) []string {
	s := make([]string, len(roles))
	for i, r := range roles {
		s[i] = string(r)
	}
	return s
}

// openBroker opens the configured broker. Kafka that is not reachable yet
// does not stop the start: submits answer 503 until it is.
func (g *Gateway) openBroker(ctx context.Context) (broker.Broker, error) {
	cfg, log := g.cfg, g.log
	backends := make([]string, len(cfg.Backends))
	for i, b := range cfg.Backends {
		backends[i] = b.Name
	}
	openCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	switch cfg.Broker.Kind {
	case "rabbitmq":
		r := cfg.Broker.RabbitMQ
		return rabbitmq.Open(openCtx, rabbitmq.Options{URL: r.URL, QueuePrefix: r.QueuePrefix, Backends: backends,
			MaxMessageBytes: int(r.MaxMessageBytes), DeliveryLimit: r.DeliveryLimit,
			Log: log.With().Str("broker", "rabbitmq").Logger()})
	case "kafka":
		k := cfg.Broker.Kafka
		return kafka.Open(openCtx, kafka.Options{
			Brokers: k.Brokers, TopicPrefix: k.TopicPrefix, Partitions: k.Partitions,
			Backends: backends, NoForward: !g.has(Worker),
			MaxMessageBytes: int(k.MaxMessageBytes), ReplicationFactor: k.ReplicationFactor,
			MinInsyncReplicas: k.MinInsyncReplicas, Retention: k.Retention.D(),
			DeadLetterRetention: k.DeadLetterRetention.D(), Log: log.With().Str("broker", "kafka").Logger(),
		})
	default:
		e := cfg.Broker.Embedded
		return embedded.Open(openCtx, embedded.Options{
			Dir: cfg.Path(e.Dir), Backends: backends,
			AckWait: e.AckWait.D(), PublishWindow: cfg.MaxInflight,
			MaxMessageBytes: int(cfg.MaxMessageBytes()), SyncAlways: e.SyncAlways(), SyncInterval: e.SyncInterval(),
			Log: log.With().Str("broker", "embedded").Logger(),
		})
	}
}

func (g *Gateway) openStore() (results.Store, error) {
	cfg := g.cfg
	routeTTL := make(map[string]time.Duration, len(cfg.Routes))
	for _, r := range cfg.Routes {
		if r.TTL > 0 {
			routeTTL[r.Name] = r.TTL.D()
		}
	}
	if cfg.Results.Store == "redis" {
		r := cfg.Results.Redis
		return redisstore.Open(redisstore.Options{Addr: r.Addr, Password: r.Password, DB: r.DB, MaxPending: r.MaxPending,
			KeyPrefix: r.KeyPrefix, TTL: cfg.Results.TTL.D(), RouteTTL: routeTTL})
	}
	return bolt.Open(bolt.Options{Dir: cfg.Path(cfg.Results.Embedded.Dir), TTL: cfg.Results.TTL.D(), RouteTTL: routeTTL})
}

// settledIn tells, from the result store, which requests of a batch
// handed out again need no delivery: those with an outcome, and those
// whose retry is queued on its own (its copy is written before its
// retrying event). A request the store does not know is delivered.
// A store that reads many records in one round trip (Redis) is asked once
// per batch.
func settledIn(store results.Store) workers.Settled {
	settled := func(rec *job.Record) bool {
		return rec != nil && (rec.Status.Terminal() || rec.Status == job.Retrying)
	}
	if many, ok := store.(interface {
		GetMany(ctx context.Context, ids []string) ([]*job.Record, error)
	}); ok {
		return func(ctx context.Context, ids []string) ([]bool, error) {
			recs, err := many.GetMany(ctx, ids)
			if err != nil {
				return nil, err
			}
			out := make([]bool, len(ids))
			for i, rec := range recs {
				out[i] = settled(rec)
			}
			return out, nil
		}
	}
	return func(ctx context.Context, ids []string) ([]bool, error) {
		out := make([]bool, len(ids))
		for i, id := range ids {
			rec, err := store.Get(ctx, id)
			switch {
			case errors.Is(err, job.ErrNotFound):
			case err != nil:
				return nil, err
			default:
				out[i] = settled(rec)
			}
		}
		return out, nil
	}
}

// newMetrics builds GET /metrics over the parts this process runs: without
// the ingress role there is no metering to read.
func newMetrics(m *workers.Manager, monitor *backlog.Monitor, ing *ingress.Server, delivers bool) *metrics.Metrics {
	src := metrics.Sources{Backends: m, Backlog: monitor, QueueOnly: !delivers}
	if ing != nil {
		src.Meter = ing.Meter()
	}
	return metrics.New(src)
}
