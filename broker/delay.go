package broker

import "time"

// DelayTiers are the fixed waits of brokers without per-message delays
// (Kafka, RabbitMQ): each tier is a topic or queue in which every message
// waits the same time, so a tier stays FIFO and its head never holds up a
// message due sooner. A held-back message waits in the largest tier not
// longer than its remaining delay, then moves on to a smaller tier or to its
// own topic.
var DelayTiers = []time.Duration{
	100 * time.Millisecond, 500 * time.Millisecond, time.Second, 5 * time.Second,
	30 * time.Second, 2 * time.Minute, 10 * time.Minute, time.Hour,
}

// DelayTier returns the largest tier not longer than wait; false when wait
// is shorter than every tier.
func DelayTier(wait time.Duration) (time.Duration, bool) {
	if wait < DelayTiers[0] {
		return 0, false
	}
	tier := DelayTiers[0]
	for _, d := range DelayTiers {
		if d <= wait {
			tier = d
		}
	}
	return tier, true
}
