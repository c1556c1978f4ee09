package kafka

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/sluice-gw/sluice/internal/retry"

	"github.com/sluice-gw/sluice/broker"
)

// settingNames are the topic configs sluice sets when it creates a topic
// and corrects on topics that exist. Kafka's defaults do not suit a queue:
// a 7-day retention deletes dead letters and a long-paused backlog, a 1 MiB
// max.message.bytes refuses bodies sluice accepts.
var settingNames = []string{"max.message.bytes", "min.insync.replicas", "retention.ms"}

// settings are the values of settingNames for topic (a logical name) with
// rf replicas.
func (b *Broker) settings(topic string, rf int) map[string]string {
	retention := b.opts.Retention
	if topic == takenTopic || strings.HasPrefix(topic, broker.DeadLetterTopic("")) {
		// Taken positions go with the dead letters they refer to.
		retention = b.opts.DeadLetterRetention
	}
	ms := "-1" // forever
	if retention > 0 {
		ms = strconv.FormatInt(retention.Milliseconds(), 10)
	}
	rf = max(1, rf)
	isr := b.opts.MinInsyncReplicas
	if isr <= 0 {
		isr = max(1, rf-1)
	}
	// More than the topic's replicas and no write could ever succeed.
	isr = min(isr, rf)
	return map[string]string{
		"max.message.bytes":   strconv.Itoa(b.fetchBytes()),
		"min.insync.replicas": strconv.Itoa(isr),
		"retention.ms":        ms,
	}
}

// prepare brings b.all (logical names) in place: created when missing,
// their settings corrected when they exist. It tries again until that
// succeeds or ctx ends, except that once every topic exists a setting
// Kafka refuses for good (say, the operator kept AlterConfigs to
// themselves) is left as it is: sluice works with the operator's topics.
// It reports whether it is done: false only when ctx ended first.
func (b *Broker) prepare(ctx context.Context) bool {
	var last string
	err := retry.Do(ctx, retry.Backoff(250*time.Millisecond, 2*time.Second), func() error {
		err := b.ensureTopics(ctx, b.all)
		b.mu.Lock()
		b.setupErr = err
		b.mu.Unlock()
		switch {
		case err == nil:
			return nil
		case b.isReady() && !retriable(err):
			b.opts.Log.Warn().Err(err).Msg("kafka: topic settings left as they are")
			return retry.Permanent(err)
		case ctx.Err() != nil:
			return err
		}
		if err.Error() != last { // once per kind of failure, not per attempt
			last = err.Error()
			b.opts.Log.Warn().Err(err).Msg("kafka: topics not ready (retrying)")
		}
		return err
	})
	return err == nil || ctx.Err() == nil
}

// isReady reports whether every topic exists.
func (b *Broker) isReady() bool {
	select {
	case <-b.ready:
		return true
	default:
		return false
	}
}

// ensureTopics makes one attempt at what prepare does, and closes b.ready
// once every topic exists.
func (b *Broker) ensureTopics(ctx context.Context, topics []string) error {
	logical := make(map[string]string, len(topics))
	names := make([]string, 0, len(topics))
	for _, t := range topics {
		logical[b.name(t)] = t
		names = append(names, b.name(t))
	}
	md, err := b.client.Metadata(ctx, &kafkago.MetadataRequest{Topics: names})
	if err != nil {
		return fmt.Errorf("kafka: topics: %w: %v", broker.ErrUnavailable, err)
	}
	rf := b.opts.ReplicationFactor
	if rf <= 0 {
		rf = max(1, min(3, len(md.Brokers)))
	}
	existing := map[string]int{} // Kafka name: replication factor
	for _, t := range md.Topics {
		if t.Error == nil && len(t.Partitions) > 0 {
			existing[t.Name] = len(t.Partitions[0].Replicas)
		}
	}
	var create []kafkago.TopicConfig
	for _, n := range names {
		if _, ok := existing[n]; ok {
			continue
		}
		tc := kafkago.TopicConfig{Topic: n, NumPartitions: b.opts.Partitions, ReplicationFactor: rf}
		want := b.settings(logical[n], rf)
		for _, k := range settingNames {
			tc.ConfigEntries = append(tc.ConfigEntries, kafkago.ConfigEntry{ConfigName: k, ConfigValue: want[k]})
		}
		create = append(create, tc)
	}
	if len(create) > 0 {
		resp, err := b.client.CreateTopics(ctx, &kafkago.CreateTopicsRequest{Topics: create})
		if err != nil {
			return fmt.Errorf("kafka: create topics: %w: %v", broker.ErrUnavailable, err)
		}
		var errs []error
		for n, terr := range resp.Errors {
			// One that exists now was created by another process since
			// the metadata said otherwise, with the same settings.
			if terr != nil && !errors.Is(terr, kafkago.TopicAlreadyExists) {
				errs = append(errs, fmt.Errorf("kafka: create topic %s: %w", n, terr))
			}
		}
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
	}
	b.readyOnce.Do(func() { close(b.ready) })
	return b.configure(ctx, existing, logical)
}

// configure sets settingNames on the topics that existed before this
// start (an earlier run, an operator) where they differ. Their partition
// count and replication factor stay as they are.
func (b *Broker) configure(ctx context.Context, existing map[string]int, logical map[string]string) error {
	if len(existing) == 0 {
		return nil
	}
	req := &kafkago.DescribeConfigsRequest{}
	for n := range existing {
		req.Resources = append(req.Resources, kafkago.DescribeConfigRequestResource{
			ResourceType: kafkago.ResourceTypeTopic, ResourceName: n, ConfigNames: settingNames})
	}
	desc, err := b.client.DescribeConfigs(ctx, req)
	if err != nil {
		return fmt.Errorf("kafka: describe topics: %w: %v", broker.ErrUnavailable, err)
	}
	var errs []error
	alter := &kafkago.IncrementalAlterConfigsRequest{}
	for _, r := range desc.Resources {
		if r.Error != nil {
			errs = append(errs, fmt.Errorf("kafka: describe topic %s: %w", r.ResourceName, r.Error))
			continue
		}
		have := map[string]string{}
		for _, e := range r.ConfigEntries {
			have[e.ConfigName] = e.ConfigValue
		}
		want := b.settings(logical[r.ResourceName], existing[r.ResourceName])
		var set []kafkago.IncrementalAlterConfigsRequestConfig
		for _, k := range settingNames {
			if have[k] != want[k] {
				set = append(set, kafkago.IncrementalAlterConfigsRequestConfig{
					Name: k, Value: want[k], ConfigOperation: kafkago.ConfigOperationSet})
			}
		}
		if len(set) > 0 {
			alter.Resources = append(alter.Resources, kafkago.IncrementalAlterConfigsRequestResource{
				ResourceType: kafkago.ResourceTypeTopic, ResourceName: r.ResourceName, Configs: set})
		}
	}
	if len(alter.Resources) > 0 {
		resp, err := b.client.IncrementalAlterConfigs(ctx, alter)
		if err != nil {
			return errors.Join(append(errs, fmt.Errorf("kafka: set topic configs: %w: %v", broker.ErrUnavailable, err))...)
		}
		for _, r := range resp.Resources {
			if r.Error != nil {
				errs = append(errs, fmt.Errorf("kafka: set configs of topic %s: %w", r.ResourceName, r.Error))
			}
		}
	}
	return errors.Join(errs...)
}

// retriable reports whether err may go away by itself: Kafka not answering
// (broker.ErrUnavailable), or answering with a code it marks temporary.
func retriable(err error) bool {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			if retriable(e) {
				return true
			}
		}
		return false
	}
	var kerr kafkago.Error
	if errors.As(err, &kerr) {
		return kerr.Temporary()
	}
	return true
}
