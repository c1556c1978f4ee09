package workers

import (
	"context"
	"testing"
)

// BenchmarkLimiter is the cost of one permit when nothing limits.
func BenchmarkLimiter(b *testing.B) {
	l := NewLimiter(Settings{Concurrency: 1 << 20}, 0, 0)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			p, err := l.Acquire(ctx)
			if err != nil {
				b.Fatal(err)
			}
			p.Done(true)
		}
	})
}
