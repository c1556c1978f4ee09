package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/sluice-gw/sluice/config"
	"github.com/sluice-gw/sluice/demo"
)

// demoReadyTimeout bounds how long `sluice demo` waits for /readyz to
// answer 200 before it gives up and stops (tests shorten it).
var demoReadyTimeout = 30 * time.Second

// demoFlags registers the demo backend's behaviour, shared by
// `sluice demo-backend` and `sluice demo`.
func demoFlags(fs *flag.FlagSet) *demo.Options {
	var o demo.Options
	fs.IntVar(&o.Capacity, "capacity", 8, "requests in progress at once; beyond it: 429 (0 = unlimited)")
	fs.Float64Var(&o.Rate, "rate", 0, "requests per second; beyond it: 429 (0 = unlimited)")
	fs.DurationVar(&o.Latency, "latency", 200*time.Millisecond, "time per request")
	fs.DurationVar(&o.Jitter, "jitter", 100*time.Millisecond, "up to this much more per request")
	fs.Float64Var(&o.FailRate, "fail-rate", 0.1, "share of requests answered 503 (0..1)")
	fs.IntVar(&o.RetryAfter, "retry-after", 1, "seconds of Retry-After sent with 429")
	return &o
}

// listenDemoBackend binds listen (the value of flag) for the demo backend.
// A port that cannot be bound is an error that says what to do about it.
func listenDemoBackend(flag, listen string, o demo.Options) (*demo.Server, error) {
	srv, err := demo.Listen(listen, o)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("the demo backend cannot listen on %s: the address is already in use by another program (stop it, or pass %s with a free address and point the config's backends[].urls at it)", listen, flag)
	}
	if err != nil {
		return nil, fmt.Errorf("the demo backend cannot listen: %w", err)
	}
	return srv, nil
}

func demoBackend(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo-backend", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:9001", "address to listen on")
	o := demoFlags(fs)
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	srv, err := listenDemoBackend("-listen", *listen, *o)
	if err != nil {
		return fmt.Errorf("demo-backend: %w", err)
	}
	fmt.Fprintf(stdout, "demo backend on http://%s (capacity %d, rate %g/s, latency %s+%s, fail rate %g); GET /stats for counts\n",
		srv.Addr(), o.Capacity, o.Rate, o.Latency, o.Jitter, o.FailRate)
	if err := srv.Run(ctx); err != nil {
		return fmt.Errorf("demo-backend: %w", err)
	}
	return nil
}

// runDemo is `sluice demo`: the demo log store and sluice in front of it, in
// one process, started in an order that makes every failure plain. The
// config is checked first; then the demo backend binds its port, so a port
// held by another program stops everything before sluice could deliver to
// that program; then sluice starts, and the banner is printed once its
// /readyz answers 200. When ctx ends sluice stops first (its deliveries in
// flight finish against the backend), then the backend. Whatever fails, both
// are stopped before runDemo returns.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer, ready listening) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	path := configFlag(fs)
	backendListen := fs.String("backend-listen", "127.0.0.1:9001", "the demo backend's address; the config's backends[].urls must point at it")
	o := demoFlags(fs)
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	cfg, err := config.Load(*path)
	if err != nil {
		printConfigErrors(stderr, *path, err)
		return errConfig
	}
	backend, err := listenDemoBackend("-backend-listen", *backendListen, *o)
	if err != nil {
		return fmt.Errorf("demo: %w; nothing was started", err)
	}
	backendCtx, stopBackend := context.WithCancel(context.Background())
	backendDone := make(chan struct{})
	go func() { defer close(backendDone); _ = backend.Run(backendCtx) }()
	defer func() { stopBackend(); <-backendDone }() // after sluice: its deliveries in flight finish

	sctx, stopServe := context.WithCancel(ctx)
	defer stopServe()
	addrs := make(chan [2]string, 1)
	served := make(chan error, 1)
	go func() {
		served <- serve(sctx, []string{"-config", *path}, stdout, stderr, func(ing, adm string) { addrs <- [2]string{ing, adm} })
	}()
	// stop ends serve and waits for it: its shutdown is bounded by
	// shutdown_timeout.
	stop := func() error {
		stopServe()
		return <-served
	}
	// cannotStart explains serve's return before the banner.
	cannotStart := func(err error) error {
		if err == nil || ctx.Err() != nil || errors.Is(err, errConfig) || errors.Is(err, errUsage) {
			return err // stopped by ctx, or serve printed why
		}
		return fmt.Errorf("demo: sluice cannot start: %w; the demo backend was stopped", err)
	}

	var a [2]string
	select {
	case a = <-addrs:
	case err := <-served:
		return cannotStart(err)
	case <-ctx.Done():
		return stop()
	}
	readyCtx, cancelReady := context.WithCancel(ctx)
	defer cancelReady()
	isReady := make(chan error, 1)
	go func() { isReady <- awaitReady(readyCtx, a[1], cfg.AdminToken) }()
	select {
	case err := <-isReady:
		if err != nil {
			if ctx.Err() != nil {
				return stop()
			}
			_ = stop()
			return fmt.Errorf("demo: %w; stopped sluice and the demo backend", err)
		}
	case err := <-served:
		return cannotStart(err)
	}
	writeBanner(stdout, bannerFor(cfg, a[0], a[1], backend.Addr().String(), *o))
	if ready != nil {
		ready(a[0], a[1])
	}
	return <-served // until ctx ends; then the deferred stop of the backend
}

// awaitReady polls the admin API's /readyz until it answers 200, ctx ends or
// demoReadyTimeout passes.
func awaitReady(ctx context.Context, adminAddr, token string) error {
	url := "http://" + dialAddr(adminAddr) + "/readyz"
	c := &http.Client{Timeout: 2 * time.Second}
	timeout := time.NewTimer(demoReadyTimeout)
	defer timeout.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	last := "no answer"
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		if resp, err := c.Do(req); err != nil {
			last = err.Error()
		} else {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = strings.TrimSpace(resp.Status + " " + string(bytes.TrimSpace(body)))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timeout.C:
			return fmt.Errorf("sluice is not ready after %s (GET %s: %s)", demoReadyTimeout, url, last)
		case <-tick.C:
		}
	}
}

// dialAddr turns a bound address into one a client on the same host can
// dial: an unspecified host ("[::]:8080", ":8080") becomes 127.0.0.1.
func dialAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// banner is what `sluice demo` prints once sluice is ready.
type banner struct {
	Version               string
	Ingress, Admin, Store string // host:port to dial
	// AdminInside: the admin API listens on loopback while the client port
	// listens on every interface, as in the container image: its curl lines
	// would not work from where the client port is reached.
	AdminInside bool
	Token       bool   // the admin API needs $SLUICE_ADMIN_TOKEN
	Route       string // a path that takes POST
	Backend     string // the backend to tune
	StoreHow    string // the demo store's behaviour, in words
	Footer      string
}

func bannerFor(cfg *config.Config, ingress, admin, store string, o demo.Options) banner {
	b := banner{
		Version: version, Ingress: dialAddr(ingress), Admin: dialAddr(admin), Store: dialAddr(store),
		AdminInside: config.Loopback(admin) && !config.Loopback(ingress),
		Token:       cfg.AdminToken != "",
		Route:       "/v1/logs",
		Footer:      "Ctrl-C stops both" + dataHint(cfg) + ".",
	}
	at := fmt.Sprintf("%d at once", o.Capacity)
	if o.Capacity == 0 {
		at = "any number at once"
	}
	b.StoreHow = fmt.Sprintf("%s-%s a request, %s, %g%% of them fail with 503", o.Latency, o.Latency+o.Jitter, at, o.FailRate*100)
	for _, r := range cfg.Routes {
		if !strings.HasSuffix(r.Path, "/") && slices.Contains(r.Methods, http.MethodPost) { // methods: upper case, [POST] by default
			b.Route = r.Path
			break
		}
	}
	if len(cfg.Backends) > 0 {
		b.Backend = cfg.Backends[0].Name
	}
	return b
}

// dataHint says how to reset the embedded broker's and result store's
// files: `make clean` when they live under ./data (make run, from the
// repository), else where they are.
func dataHint(cfg *config.Config) string {
	var dirs []string
	if cfg.Broker.Kind == "" || cfg.Broker.Kind == "embedded" {
		dirs = append(dirs, cfg.Path(cfg.Broker.Embedded.Dir))
	}
	if cfg.Results.Store == "" || cfg.Results.Store == "embedded" {
		dirs = append(dirs, cfg.Path(cfg.Results.Embedded.Dir))
	}
	if len(dirs) == 0 {
		return ""
	}
	wd, _ := os.Getwd()
	_, makefileErr := os.Stat(filepath.Join(wd, "Makefile"))
	underData := makefileErr == nil
	parent := filepath.Dir(dirs[0])
	for _, d := range dirs {
		if rel, err := filepath.Rel(filepath.Join(wd, "data"), d); err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
			underData = false
		}
		if filepath.Dir(d) != parent {
			parent = ""
		}
	}
	switch {
	case underData:
		return "; `make clean` resets the data"
	case parent != "":
		return "; the data stays in " + parent
	default:
		return "; the data stays in " + strings.Join(dirs, " and ")
	}
}

func writeBanner(w io.Writer, b banner) {
	var s strings.Builder
	p := func(f string, a ...any) { fmt.Fprintf(&s, f+"\n", a...) }
	admin := "admin http://" + b.Admin
	if b.AdminInside {
		admin += ", inside the container only"
	}
	auth := ""
	if b.Token {
		auth = ` -H "Authorization: Bearer $SLUICE_ADMIN_TOKEN"`
	}
	p("")
	p("  sluice %s is ready on http://%s (%s),", b.Version, b.Ingress, admin)
	p("  in front of the demo log store on http://%s:", b.Store)
	p("  %s.", b.StoreHow)
	p("  Try, in another terminal:")
	p("")
	p("  # submit a log batch: 202 and an id, in about a millisecond")
	p("  ID=$(curl -s -X POST http://%s%s \\", b.Ingress, b.Route)
	p("       -H 'Content-Type: application/json' \\")
	p(`       -d '{"source":"web","records":[{"level":"info","msg":"hello"}]}' \`)
	p(`       | sed -E 's/.*"id":"([^"]+)".*/\1/'); echo "$ID"`)
	p("")
	p("  # its outcome, waiting up to 10 s for it")
	p(`  curl -s "http://%s/v1/requests/$ID?wait=10s"`, b.Ingress)
	p("")
	p("  # the backend's own answer, replayed as is")
	p(`  curl -si "http://%s/v1/requests/$ID/response"`, b.Ingress)
	p("")
	p("  # a burst of 100: sluice absorbs the store's limits and failures")
	p("  for i in $(seq 100); do curl -s -o /dev/null -X POST http://%s%s \\", b.Ingress, b.Route)
	p(`       -d '{"records":[{"level":"info","msg":"n'$i'"}]}'; done`)
	p("  curl -s http://%s/stats", b.Store)
	if !b.AdminInside && b.Backend != "" {
		p("  curl -s%s http://%s/admin/backends", auth, b.Admin)
		p("")
		p("  # tune the backend live")
		p(`  curl -s%s -X PATCH http://%s/admin/backends/%s -d '{"rate":5}'`, auth, b.Admin, b.Backend)
	}
	p("")
	p("  %s", b.Footer)
	p("")
	_, _ = io.WriteString(w, s.String())
}
