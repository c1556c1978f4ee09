package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/sluice-gw/sluice/broker/rabbitmq"
)

// deliveryRate is the sink's rate in the delivery part; deliveryBacklog is
// the backlog it drains from, 100 s of it.
const (
	deliveryRate    = 200
	deliveryBacklog = 20000
	deliveryWindow  = 10 * time.Second
)

// delivery measures sluice's CPU per delivery at a set rate, on each
// broker, draining a backlog and keeping up with submits at the rate: a
// backlog waiting must not make a delivery cost more.
func delivery(b *bench) error {
	fmt.Fprintf(b.log, "== delivery: CPU per delivery at rate %d, concurrency 16, %s windows: a %d backlog vs submits at the rate\n",
		deliveryRate, deliveryWindow, deliveryBacklog)
	type kind struct {
		name, broker string
		cleanup      func()
	}
	kinds := []kind{{name: "embedded"}}
	if k, err := startChild("-kfake-server"); err != nil {
		fmt.Fprintf(b.log, "  kafka skipped: %v\n", err)
	} else {
		defer k.stop()
		kinds = append(kinds, kind{name: "kafka", broker: fmt.Sprintf(
			"broker: { kind: kafka, kafka: { brokers: [%q], topic_prefix: \"delivery%d.\", partitions: 6 } }",
			k.addr, time.Now().Unix())})
	}
	if _, closePub, err := rabbitPublish(); err != nil {
		fmt.Fprintf(b.log, "  rabbitmq skipped: no RabbitMQ at %s (%v)\n", rabbitURL(), err)
	} else {
		closePub()
		prefix := fmt.Sprintf("sluice-delivery-%d.", time.Now().UnixNano())
		kinds = append(kinds, kind{name: "rabbitmq",
			broker: fmt.Sprintf("broker: { kind: rabbitmq, rabbitmq: { url: %q, queue_prefix: %q } }", rabbitURL(), prefix),
			cleanup: func() {
				_ = rabbitmq.DeleteQueues(rabbitmq.Options{URL: rabbitURL(), QueuePrefix: prefix, Backends: []string{"sink"}})
			}})
	}
	for _, k := range kinds {
		err := b.deliveryOn(k.name, k.broker)
		if k.cleanup != nil {
			k.cleanup()
		}
		if err != nil {
			return fmt.Errorf("%s: %w", k.name, err)
		}
	}
	fmt.Fprintln(b.log)
	return nil
}

// deliveryOn measures one broker: first submits at the rate (no backlog),
// then, deliveries paused, a backlog is submitted and drained at the rate.
func (b *bench) deliveryOn(name, brokerCfg string) error {
	b.sink.reset(false)
	top := "ack: durable"
	if *profileDir != "" {
		top += "\nadmin_pprof: true"
	}
	p, err := b.startSluice(sluiceConfig{top: top, broker: brokerCfg,
		backend: fmt.Sprintf("rate: %d\nconcurrency: 16", deliveryRate)})
	if err != nil {
		return err
	}
	defer p.stop()

	time.Sleep(2 * time.Second)
	b.idleWindow(p, name, "idle", "nothing to do")

	// No backlog: submit at the rate, from one paced loop.
	stop := make(chan struct{})
	submitted := make(chan int)
	go func() {
		send := post(p.addr, "/v1/logs", 4)
		t := time.NewTicker(time.Second / deliveryRate)
		defer t.Stop()
		n := 0
		for {
			select {
			case <-stop:
				submitted <- n
				return
			case <-t.C:
				if s, err := send(); err == nil && s == 202 {
					n++
				}
			}
		}
	}()
	time.Sleep(2 * time.Second) // warm-up: connections, consumer group
	b.deliveryWindow(p, name, "steady", "submits at the rate, no backlog")
	close(stop)
	<-submitted

	// A backlog: paused while it is submitted, then drained at the rate.
	p.pause(true)
	time.Sleep(500 * time.Millisecond)
	if got := p.submitN(deliveryBacklog); got < deliveryBacklog*9/10 {
		return fmt.Errorf("backlog: only %d of %d accepted", got, deliveryBacklog)
	}
	time.Sleep(time.Second)
	b.idleWindow(p, name, "paused", "paused, the backlog waiting")
	p.pause(false)
	time.Sleep(2 * time.Second) // the first burst and the fetch pipeline fill
	b.deliveryWindow(p, name, "backlog", fmt.Sprintf("draining a %d backlog", deliveryBacklog))
	return nil
}

// deliveryWindow measures sluice's CPU over deliveryWindow and the
// deliveries the sink saw meanwhile, and records them. With -profile it
// takes a CPU profile of the window.
func (b *bench) deliveryWindow(p *sluiceProc, name, what, label string) {
	var prof chan error
	if *profileDir != "" {
		prof = make(chan error, 1)
		go func() {
			prof <- p.profile(filepath.Join(*profileDir, "delivery-"+name+"-"+what+".pprof"), deliveryWindow)
		}()
	}
	n0, c0, t0 := b.sink.count(), p.cpu(), time.Now()
	time.Sleep(deliveryWindow)
	n, used, el := b.sink.count()-n0, p.cpu()-c0, time.Since(t0)
	if prof != nil {
		if err := <-prof; err != nil {
			fmt.Fprintf(b.log, "  profile: %v\n", err)
		}
	}
	per := us(used) / float64(max(n, 1))
	key := "delivery." + name + "." + what
	b.rep.figure(key+".per_s", float64(n)/el.Seconds())
	b.rep.figure(key+".cores", used.Seconds()/el.Seconds())
	b.rep.figure(key+".us_per_delivery", per)
	fmt.Fprintf(b.log, "  %-8s %-34s %6.1f delivered/s  %.3f cores  %6.0f µs CPU per delivery\n",
		name, label, float64(n)/el.Seconds(), used.Seconds()/el.Seconds(), per)
}

// profile writes a CPU profile of sluice over d to path (admin_pprof on).
func (p *sluiceProc) profile(path string, d time.Duration) error {
	resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", p.admin, int(d.Seconds())))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("profile: %s", resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// idleWindow measures sluice's CPU while it delivers nothing.
func (b *bench) idleWindow(p *sluiceProc, name, what, label string) {
	c0, t0 := p.cpu(), time.Now()
	time.Sleep(deliveryWindow / 2)
	cores := (p.cpu() - c0).Seconds() / time.Since(t0).Seconds()
	b.rep.figure("delivery."+name+"."+what+".cores", cores)
	fmt.Fprintf(b.log, "  %-8s %-34s %6s               %.3f cores\n", name, label, "", cores)
}
