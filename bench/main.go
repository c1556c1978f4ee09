package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"time"
)

var (
	sluiceBin   = flag.String("sluice", "bin/sluice", "sluice binary")
	dur         = flag.Duration("duration", 5*time.Second, "length of each ingest measurement")
	conns       = flag.Int("conns", 64, "client connections for ingest")
	only        = flag.String("only", "", "run only these parts, comma-separated: ingest,rate,retries,cpu,overload,kafka,rabbitmq,delivery; and soak and scale, which run only when named")
	soakDur     = flag.Duration("soak", 10*time.Minute, "with the soak part: how long it submits")
	soakTTL     = flag.Duration("soak-ttl", 2*time.Minute, "with the soak part: results.ttl of the sluice it runs")
	soakRate    = flag.Int("soak-rate", 2000, "with the soak part: submits per second (open loop)")
	profileDir  = flag.String("profile", "", "with the ingest and delivery parts: write CPU profiles of sluice's measured runs and windows to this directory (admin_pprof on)")
	extraConfig = flag.String("config", "", "more top-level YAML for every sluice the bench starts, e.g. 'group_commit: { writes: 4 }'")
	jsonOut     = flag.Bool("json", false, "print one JSON document with every measurement and goal result on stdout; progress goes to stderr")
	bareAddr    = flag.String("bare-server", "", "internal: run the bare fasthttp baseline on this address")
	kfakeRun    = flag.Bool("kfake-server", false, "internal: run kfake and print its address")
)

// main exits 0 when every goal is met, 1 when a goal is missed or a part
// could not run, 2 on a usage error.
func main() {
	flag.Parse()
	var err error
	switch {
	case *bareAddr != "":
		err = serveBare(*bareAddr)
	case *kfakeRun:
		err = serveKfake()
	default:
		os.Exit(run(os.Stdout, os.Stderr))
	}
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

func run(stdout, stderr io.Writer) int {
	sel, err := selectParts(*only)
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 2
	}
	log := stdout
	if *jsonOut {
		log = stderr
	}
	env := environment{Cores: runtime.NumCPU(), Go: runtime.Version(), Duration: dur.String(), Conns: *conns}
	for _, p := range sel {
		env.Parts = append(env.Parts, p.name)
	}
	rep := newReport(env)
	sk, ln, err := newSink()
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	go func() { _ = sk.srv.Serve(ln) }()
	defer func() { _ = sk.srv.Shutdown() }()

	fmt.Fprintf(log, "sluice bench — %d cores, %s, %s per ingest run, %d connections, 1 KiB JSON\n\n",
		env.Cores, env.Go, *dur, *conns)
	b := &bench{log: log, rep: rep, sink: sk, bin: *sluiceBin, conns: *conns, dur: *dur}
	for _, p := range sel {
		err := p.run(b)
		switch {
		case err == nil:
		case errors.Is(err, errSkipped):
			rep.Skipped[p.name] = err.Error()
			fmt.Fprintf(log, "  %v\n\n", err)
		default:
			rep.Errors[p.name] = err.Error()
			fmt.Fprintf(log, "  %s: %v\n\n", p.name, err)
		}
	}
	rep.finish(goals)
	if *jsonOut {
		err = writeJSON(stdout, rep)
	} else {
		err = writeGoals(stdout, rep)
	}
	if err != nil {
		fmt.Fprintln(stderr, "bench: write report:", err)
		return 1
	}
	if rep.failed() {
		return 1
	}
	return 0
}
