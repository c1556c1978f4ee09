package embedded

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/wire"
)

// BenchmarkPublish is ingress' publish with ack: durable: 64 goroutines
// publishing a 1 KiB request with its headers and waiting for each
// confirm. cpu-µs/op is the process' CPU per publish, client and
// JetStream server together (both run in this process).
func BenchmarkPublish(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	br, err := Open(ctx, Options{Dir: b.TempDir(), Backends: []string{"logs"}})
	cancel()
	if err != nil {
		b.Fatal(err)
	}
	defer br.Close()
	now := time.Now()
	msg := wire.EncodeRequest(&job.Request{
		ID: job.NewIDAt(now), Route: "logs", Backend: "logs", Method: "POST",
		Header: [][2]string{{"Content-Type", "application/json"}}, Body: []byte(strings.Repeat("x", 1024)),
		AcceptedAt: now,
	})
	topic := broker.RequestTopic("logs")
	b.SetParallelism(32) // 64 on 2 cores, as bench's ingest part
	b.ReportAllocs()
	cpu0 := cpuTime()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := br.Publish(context.Background(), topic, msg); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(cpuTime()-cpu0)/1e3/float64(b.N), "cpu-µs/op")
}

// cpuTime is the CPU this process used so far, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
