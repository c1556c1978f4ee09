// Package redissub is the one Redis subscription loop of sluice's Redis
// adapters (the result store's change announcements, the cluster's
// tunings): go-redis subscribes again by itself after a connection
// drops, and every (re)subscription is reported, since announcements made
// meanwhile were lost. It pings when idle, so a dead connection is
// noticed and replaced, and backs off while Redis is away.
package redissub

import (
	"context"
	"errors"
	"net"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/sluice-gw/sluice/internal/retry"
)

// Listen subscribes to channel until ctx ends: subscribed is called each
// time the subscription is (re)established, message with each message's
// payload. The end of ctx ends a pending read by closing the
// subscription. While Redis is away it waits from minBackoff up to 2 s
// between tries.
func Listen(ctx context.Context, rdb goredis.UniversalClient, channel string, minBackoff time.Duration,
	subscribed func(), message func(payload string)) {
	ps := rdb.Subscribe(ctx) // no channel yet: no connection either
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
	defer func() {
		stop()
		_ = ps.Close()
	}()
	_ = ps.Subscribe(ctx, channel) // a failed subscribe is retried by Receive
	again := retry.Backoff(minBackoff, 2*time.Second)
	idle := 0
	for ctx.Err() == nil {
		m, err := ps.ReceiveTimeout(ctx, time.Second)
		switch m := m.(type) {
		case *goredis.Subscription:
			if m.Kind == "subscribe" {
				subscribed()
			}
		case *goredis.Message:
			message(m.Payload)
		}
		var nerr net.Error
		switch {
		case err == nil:
			idle = 0
			again.Reset()
		case errors.As(err, &nerr) && nerr.Timeout():
			again.Reset()
			if idle++; idle%5 == 0 {
				_ = ps.Ping(ctx) // a failed ping makes go-redis reconnect
			}
		default: // Redis is away: Receive dials again on the next call
			retry.Sleep(ctx, again.NextBackOff())
		}
	}
}
