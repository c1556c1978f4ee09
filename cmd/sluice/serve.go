package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"

	"github.com/sluice-gw/sluice/admin"
	"github.com/sluice-gw/sluice/backlog"
	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/broker/embedded"
	"github.com/sluice-gw/sluice/broker/kafka"
	"github.com/sluice-gw/sluice/broker/rabbitmq"
	"github.com/sluice-gw/sluice/config"
	"github.com/sluice-gw/sluice/ingress"
	"github.com/sluice-gw/sluice/results"
	"github.com/sluice-gw/sluice/workers"
)

var allRoles = []string{"ingress", "worker", "collector"}

func loadConfig(path string) (*config.Config, error) {
	return config.Load(path)
}

// newLogger logs to w as JSON, or as text with log.format: console —
// coloured only when w is a terminal (and $NO_COLOR is empty), so a log
// written to a file or a pipe carries no escape codes.
func newLogger(cfg *config.Config, w io.Writer) zerolog.Logger {
	lvl, err := zerolog.ParseLevel(cfg.Log.Level)
	if err != nil {
		lvl = zerolog.InfoLevel
	}
	if cfg.Log.Format == "console" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly, NoColor: !colorTerminal(w)}
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger()
}

// colorTerminal reports whether w is a terminal that colour suits.
func colorTerminal(w io.Writer) bool {
	if os.Getenv("NO_COLOR") != "" { // https://no-color.org
		return false
	}
	f, ok := w.(interface{ Fd() uintptr })
	return ok && (isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd()))
}

func parseRoles(s string) ([]string, error) {
	var roles []string
	for _, r := range strings.Split(s, ",") {
		r = strings.TrimSpace(r)
		if !slices.Contains(allRoles, r) {
			return nil, fmt.Errorf("-roles: unknown role %q (want ingress, worker, collector)", r)
		}
		if !slices.Contains(roles, r) {
			roles = append(roles, r)
		}
	}
	return roles, nil
}

// serve runs the gateway until ctx ends, then shuts down in order: intake
// stops, producers flush, fetching stops, deliveries in flight finish (or go
// back to the queue), the collector stores the last outcomes, and the broker
// and store close. Nothing that got a 202 is lost by it.
func serve(ctx context.Context, args []string, stdout, stderr io.Writer, ready listening) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	path := configFlag(fs)
	rolesFlag := fs.String("roles", strings.Join(allRoles, ","), "roles to run: ingress,worker,collector")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	roles, err := parseRoles(*rolesFlag)
	if err != nil {
		fmt.Fprintln(stderr, "sluice serve:", err)
		return errUsage
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		printConfigErrors(stderr, *path, err)
		return errConfig
	}
	if len(roles) != len(allRoles) {
		switch {
		case cfg.Broker.Kind == "embedded":
			fmt.Fprintln(stderr, "sluice serve: -roles: the embedded broker lives inside one process, so it runs all roles; use kafka or rabbitmq to split them")
			return errUsage
		case cfg.Results.Store != "redis":
			fmt.Fprintln(stderr, "sluice serve: -roles: processes with separate roles share outcomes through results.store: redis")
			return errUsage
		}
	}
	log := newLogger(cfg, stderr)
	has := func(r string) bool { return slices.Contains(roles, r) }

	// Bind the listeners first: a port in use fails before anything starts.
	var ingLn, admLn net.Listener
	if has("ingress") {
		if ingLn, err = net.Listen("tcp", cfg.Listen); err != nil {
			return fmt.Errorf("listen: %w", err)
		}
		defer ingLn.Close()
	}
	if admLn, err = net.Listen("tcp", cfg.AdminListen); err != nil {
		return fmt.Errorf("admin_listen: %w", err)
	}
	defer admLn.Close()

	backends := make([]string, len(cfg.Backends))
	topics := make([]string, len(cfg.Backends))
	for i, b := range cfg.Backends {
		backends[i], topics[i] = b.Name, broker.RequestTopic(b.Name)
	}
	br, err := openBroker(ctx, cfg, backends, has("worker"), log)
	if err != nil {
		return err
	}
	// The broker's background work (reconnecting, delay forwarders) runs
	// until the very end: it stops, then the broker closes, last.
	runCtx, stopBroker := context.WithCancel(context.Background())
	brokerDone := make(chan error, 1)
	go func() { brokerDone <- br.Run(runCtx) }()
	brokerClosed := false
	defer func() {
		if !brokerClosed {
			stopBroker()
			<-brokerDone
			_ = br.Close()
		}
	}()
	store, err := openStore(cfg)
	if err != nil {
		return err
	}
	defer store.Close()

	monitor := backlog.New(br, topics, 500*time.Millisecond)
	monitor.Poll(ctx)
	manager := workers.NewManager(cfg, br, log)

	// Background roles run under their own contexts, stopped in order below.
	bg := func(wg *sync.WaitGroup, name string, f func(context.Context) error) context.CancelFunc {
		c, cancel := context.WithCancel(context.Background())
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(c); err != nil {
				log.Error().Err(err).Str("role", name).Msg("stopped with an error")
			}
		}()
		return cancel
	}
	var monWG, workWG, collWG sync.WaitGroup
	stopMonitor := bg(&monWG, "monitor", monitor.Run)
	stopWorkers, stopCollector := context.CancelFunc(func() {}), context.CancelFunc(func() {})
	if has("collector") {
		stopCollector = bg(&collWG, "collector", (&results.Collector{Sub: br, Store: store, Log: log}).Run)
	}
	if has("worker") {
		stopWorkers = bg(&workWG, "worker", manager.Run)
	}

	adm := &http.Server{
		Handler: admin.New(cfg.AdminToken, cfg.AdminPprof, manager, monitor, store, []admin.Check{
			{Name: "broker", Ping: br.Ping}, {Name: "results", Ping: store.Ping},
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	admDone := make(chan struct{})
	go func() { defer close(admDone); _ = adm.Serve(admLn) }()

	var ing *ingress.Server
	ingErr := make(chan error, 1)
	ingAddr := ""
	if has("ingress") {
		if ing, err = ingress.New(cfg, br, store, monitor, log); err != nil {
			return err
		}
		go func() { ingErr <- ing.Serve(ingLn) }()
		ingAddr = ingLn.Addr().String()
	}
	log.Info().Str("listen", ingAddr).Str("admin", admLn.Addr().String()).
		Strs("roles", roles).Str("broker", cfg.Broker.Kind).Str("ack", cfg.Ack).Msg("sluice is up")
	if ready != nil {
		ready(ingAddr, admLn.Addr().String())
	}

	var runErr error
	ingDone := ing == nil
	select {
	case <-ctx.Done():
	case err := <-ingErr:
		runErr, ingDone = fmt.Errorf("ingress: %w", err), true
	}

	// One deadline for the whole stop (SPEC: within shutdown_timeout),
	// shared out in order: intake and the ack: fast buffer get the first
	// half, deliveries in flight finish until three quarters, then the
	// collector stores the last outcomes and everything closes.
	log.Info().Msg("shutting down")
	start := time.Now()
	budget := cfg.ShutdownTimeout.D()
	deadline := start.Add(budget)
	sctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if ing != nil {
		ictx, icancel := context.WithDeadline(sctx, start.Add(budget/2))
		if err := ing.Shutdown(ictx); err != nil {
			log.Error().Err(err).Msg("ingress shutdown")
		}
		icancel()
		if !ingDone {
			<-ingErr // Serve has returned
		}
	}
	manager.StopBy(start.Add(budget*3/4), deadline.Add(-time.Second))
	stopWorkers() // pools stop fetching, finish or hand back in-flight work
	workWG.Wait()
	// Let the collector store the outcomes the workers just published.
	for time.Now().Before(deadline.Add(-time.Second)) {
		st, err := br.Stats(sctx, broker.ResultTopic)
		if err != nil || st.Depth == 0 || !has("collector") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	stopCollector()
	collWG.Wait()
	stopMonitor()
	monWG.Wait()
	_ = adm.Shutdown(sctx)
	<-admDone
	brokerClosed = true
	stopBroker()
	if err := <-brokerDone; err != nil {
		log.Error().Err(err).Msg("broker run")
	}
	if err := br.Close(); err != nil {
		log.Error().Err(err).Msg("broker close")
	}
	log.Info().Msg("stopped")
	return runErr
}

// openBroker opens the configured broker. Kafka that is not reachable yet
// does not stop the start: submits answer 503 until it is.
func openBroker(ctx context.Context, cfg *config.Config, backends []string, worker bool, log zerolog.Logger) (broker.Broker, error) {
	openCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	switch cfg.Broker.Kind {
	case "rabbitmq":
		r := cfg.Broker.RabbitMQ
		return rabbitmq.Open(openCtx, rabbitmq.Options{URL: r.URL, QueuePrefix: r.QueuePrefix, Backends: backends,
			MaxMessageBytes: int(r.MaxMessageBytes), DeliveryLimit: r.DeliveryLimit, Log: log})
	case "kafka":
		k := cfg.Broker.Kafka
		return kafka.Open(openCtx, kafka.Options{
			Brokers: k.Brokers, TopicPrefix: k.TopicPrefix, Partitions: k.Partitions,
			Backends: backends, NoForward: !worker,
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

func openStore(cfg *config.Config) (results.Store, error) {
	if cfg.Results.Store == "redis" {
		r := cfg.Results.Redis
		return results.OpenRedis(results.RedisOptions{Addr: r.Addr, Password: r.Password, DB: r.DB, MaxPending: r.MaxPending,
			KeyPrefix: r.KeyPrefix, TTL: cfg.Results.TTL.D()}), nil
	}
	return results.OpenEmbedded(cfg.Path(cfg.Results.Embedded.Dir), cfg.Results.TTL.D())
}
