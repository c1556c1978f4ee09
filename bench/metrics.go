package main

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"
)

// scraper asks a sluice's GET /metrics at once and then every interval, as
// Prometheus would, until stopped; it counts the answers and times the
// successful ones.
type scraper struct {
	stop      chan struct{}
	done      sync.WaitGroup
	ok, other int
	bytes     int64
	took      time.Duration
}

var scrapeClient = &http.Client{Timeout: 10 * time.Second}

func scrapeEvery(admin string, every time.Duration) *scraper {
	s := &scraper{stop: make(chan struct{})}
	s.done.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			t0 := time.Now()
			resp, err := scrapeClient.Get("http://" + admin + "/metrics")
			if err != nil {
				s.other++
			} else {
				n, _ := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					s.ok, s.bytes, s.took = s.ok+1, s.bytes+n, s.took+time.Since(t0)
				} else {
					s.other++
				}
			}
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	})
	return s
}

func (s *scraper) end() { close(s.stop); s.done.Wait() }

// merge adds r's calls to into, as if one run (latencies kept sorted).
func merge(into *loadResult, r loadResult) {
	if into.byStatus == nil {
		into.byStatus = map[int]int{}
	}
	into.calls += r.calls
	into.errors += r.errors
	into.elapsed += r.elapsed
	into.cpu += r.cpu
	for k, v := range r.byStatus {
		into.byStatus[k] += v
	}
	into.latencies = append(into.latencies, r.latencies...)
	slices.Sort(into.latencies)
}

// metricsSlice is how long one turn of the metrics part loads one sluice.
const metricsSlice = time.Second

// metricsCost measures ingest with GET /metrics scraped every second
// against the same config with metrics: false (scraped alike, answered
// 404). Both run side by side, deliveries paused as in the other ingest
// parts, and take turns of a second under the same load, in the order
// off-on, on-off, ... — so a machine whose load drifts (other work, a
// shared VM) weighs on both alike; each is scraped only during its turns,
// once a second. The figures are each one's req/s over all its turns. What
// a delivery attempt pays for metrics (one histogram observation) is
// BenchmarkLatencyObserve's.
func metricsCost(b *bench) error {
	turns := max(4, int(4*b.dur/metricsSlice)) // 20 at the default -duration: fewer swing with a busy machine
	fmt.Fprintf(b.log, "== metrics: ingest with GET /metrics scraped every second, against metrics: false; %d turns of %v each, side by side\n",
		turns, metricsSlice)
	var procs [2]*sluiceProc
	var ops [2]op
	for i, top := range []string{"ack: durable\nmetrics: false", "ack: durable\nmetrics: true"} {
		p, err := b.startSluice(sluiceConfig{top: top, backend: "concurrency: 16"})
		if err != nil {
			return err
		}
		defer p.stop()
		p.pause(true)
		procs[i], ops[i] = p, post(p.addr, "/v1/logs", b.conns)
		closedLoop(b.conns, time.Second, 0, ops[i]) // warm-up
	}
	var res [2]loadResult
	var scrapes [2]*scraper
	var scrapeTime time.Duration
	var scrapeOK, scrapeOther [2]int
	var scrapeBytes int64
	for turn := range turns {
		for k := range 2 {
			i := k ^ turn%2 // off, on; then on, off
			s := scrapeEvery(procs[i].admin, time.Second)
			r := measure(loadSpec{conns: b.conns, dur: metricsSlice, cpu: procs[i].cpu}, ops[i])
			s.end()
			scrapes[i] = s
			merge(&res[i], r)
			scrapeOK[i] += s.ok
			scrapeOther[i] += s.other
			if i == 1 {
				scrapeTime += s.took
				scrapeBytes += s.bytes
			}
		}
	}
	for i, name := range []string{"off", "on"} {
		label := []string{"sluice, metrics: false", "sluice, /metrics scraped every 1s"}[i]
		m := newMeasurement("metrics", name, label, "req/s", b.conns, res[i])
		b.rep.add(m)
		fmt.Fprintln(b.log, m.row())
		if r := res[i]; r.ok() < r.calls {
			return fmt.Errorf("metrics %s: %d of %d requests refused", name, r.calls-r.ok(), r.calls)
		}
	}
	switch {
	case scrapeOK[1] == 0 || scrapeOther[1] > 0:
		return fmt.Errorf("metrics on: %d scrapes answered 200, %d not", scrapeOK[1], scrapeOther[1])
	case scrapeOK[0] > 0:
		return fmt.Errorf("metrics off: /metrics answered 200 with metrics: false")
	}
	off, on := res[0].rps(), res[1].rps()
	b.rep.figure("metrics.off.rps", off)
	b.rep.figure("metrics.on.rps", on)
	b.rep.figure("metrics.scrapes", float64(scrapeOK[1]))
	b.rep.figure("metrics.scrape_ms", ms(scrapeTime/time.Duration(scrapeOK[1])))
	fmt.Fprintf(b.log, "  %d scrapes under load, %.1f ms and %.0f KiB each\n", scrapeOK[1],
		ms(scrapeTime/time.Duration(scrapeOK[1])), float64(scrapeBytes)/float64(scrapeOK[1])/1024)
	fmt.Fprintf(b.log, "  with metrics / without: %.3fx\n", on/off)

	// The same cost, read off CPU time rather than throughput, which a
	// busy machine moves by more than 3%: what sluice spends on one scrape
	// (idle, 50 in a row), against what ingest at full load costs it in a
	// second. A scrape a second is that share of ingest's CPU.
	const n = 50
	c0 := procs[1].cpu()
	for range n {
		resp, err := scrapeClient.Get("http://" + procs[1].admin + "/metrics")
		if err != nil {
			return fmt.Errorf("scrape: %w", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	perScrape := (procs[1].cpu() - c0) / n
	ingestPerSec := res[0].cpuPerCall() * time.Duration(off) // CPU of one second at full load
	if ingestPerSec > 0 {
		share := float64(perScrape) / float64(ingestPerSec) * 100
		b.rep.figure("metrics.scrape_cpu_ms", ms(perScrape))
		b.rep.figure("metrics.scrape_cpu_pct", share)
		fmt.Fprintf(b.log, "  one scrape costs sluice %.2f ms of CPU; ingest at %.0f req/s costs %.0f ms a second: %.2f%% for a scrape a second\n",
			ms(perScrape), off, ms(ingestPerSec), share)
	}
	fmt.Fprintln(b.log)
	return nil
}
