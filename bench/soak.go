package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

// soak runs sluice (embedded broker and store, results.ttl -soak-ttl) for
// -soak at a fixed open-loop rate against a backend that answers at once,
// sampling sluice's RSS and the result store's disk bytes every 10 s. Once
// the first ttl (and a window past it) has gone by, records expire as fast
// as they come: from then on RSS and disk should stay flat. It reports
// both at the end of that first window and at the end, and the growth in
// between (soak.rss_growth_pct, soak.disk_growth_pct).
func soak(b *bench) error {
	dur, ttl, rate := *soakDur, *soakTTL, *soakRate
	settle := ttl + ttl/8 + 10*time.Second // ttl, one store window, a drop tick
	if dur < settle+30*time.Second {
		return fmt.Errorf("-soak %v is too short for -soak-ttl %v: it needs at least %v", dur, ttl, settle+30*time.Second)
	}
	fmt.Fprintf(b.log, "== soak: %d req/s for %v, results.ttl %v, embedded broker and store\n", rate, dur, ttl)
	var delivered atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen for the soak backend: %w", err)
	}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		delivered.Add(1)
		ctx.SetStatusCode(200)
		ctx.SetBodyString(`{"ok":true}`)
	}}
	go func() { _ = srv.Serve(ln) }()
	defer func() { _ = srv.Shutdown() }()
	p, err := startSluice(b.bin, "http://"+ln.Addr().String()+"/ingest", sluiceConfig{
		results: fmt.Sprintf("ttl: %s", ttl), backend: "concurrency: 64",
	})
	if err != nil {
		return err
	}
	defer p.stop()
	storeDir := filepath.Join(p.dir, "r")

	// Open loop: a tick every 10 ms hands rate/100 submits to 128 senders;
	// submits the senders cannot take at once are counted as not sent.
	var accepted, refused, failed, unsent atomic.Int64
	o := post(p.addr, "/v1/logs", 128)
	jobs := make(chan struct{}, rate)
	var wg sync.WaitGroup
	for range 128 {
		wg.Go(func() {
			for range jobs {
				switch st, err := o(); {
				case err != nil:
					failed.Add(1)
				case st == 202:
					accepted.Add(1)
				default:
					refused.Add(1)
				}
			}
		})
	}
	type sample struct {
		at        time.Duration
		rss, disk float64 // MiB
	}
	var samples []sample
	start := time.Now()
	tick, every := time.NewTicker(10*time.Millisecond), time.NewTicker(10*time.Second)
	perTick, carry := float64(rate)/100, 0.0
	for time.Since(start) < dur {
		select {
		case <-tick.C:
			carry += perTick
			for ; carry >= 1; carry-- {
				select {
				case jobs <- struct{}{}:
				default:
					unsent.Add(1)
				}
			}
		case <-every.C:
			s := sample{at: time.Since(start).Round(time.Second), rss: p.rss(), disk: dirMiB(storeDir)}
			samples = append(samples, s)
			fmt.Fprintf(b.log, "  %5v  RSS %6.1f MiB  store %6.1f MiB  accepted %d  delivered %d\n",
				s.at, s.rss, s.disk, accepted.Load(), delivered.Load())
		}
	}
	tick.Stop()
	every.Stop()
	close(jobs)
	wg.Wait()
	waitFor(30*time.Second, 100*time.Millisecond, func() bool { return delivered.Load() >= accepted.Load() })

	var first *sample
	for i := range samples {
		if samples[i].at >= settle {
			first = &samples[i]
			break
		}
	}
	if first == nil || len(samples) == 0 {
		return errors.New("no sample after the first ttl window")
	}
	last := samples[len(samples)-1]
	growth := func(a, b float64) float64 { return (b - a) / a * 100 }
	b.rep.figure("soak.accepted", float64(accepted.Load()))
	b.rep.figure("soak.delivered", float64(delivered.Load()))
	b.rep.figure("soak.rss_first_mib", first.rss)
	b.rep.figure("soak.rss_end_mib", last.rss)
	b.rep.figure("soak.disk_first_mib", first.disk)
	b.rep.figure("soak.disk_end_mib", last.disk)
	b.rep.figure("soak.rss_growth_pct", growth(first.rss, last.rss))
	b.rep.figure("soak.disk_growth_pct", growth(first.disk, last.disk))
	fmt.Fprintf(b.log, "  accepted %d (%.0f/s), refused %d, errors %d, not sent %d; delivered %d\n",
		accepted.Load(), float64(accepted.Load())/dur.Seconds(), refused.Load(), failed.Load(), unsent.Load(), delivered.Load())
	fmt.Fprintf(b.log, "  RSS   %.1f MiB at %v (first ttl window over), %.1f MiB at %v: %+.1f%%\n",
		first.rss, first.at, last.rss, last.at, growth(first.rss, last.rss))
	fmt.Fprintf(b.log, "  store %.1f MiB at %v, %.1f MiB at %v: %+.1f%%\n\n",
		first.disk, first.at, last.disk, last.at, growth(first.disk, last.disk))
	return nil
}

// dirMiB is the disk space the files of dir take (allocated blocks, not
// apparent sizes), in MiB.
func dirMiB(dir string) float64 {
	var n int64
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return float64(n) / (1 << 20)
}
