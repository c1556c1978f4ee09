package gateway

import (
	"context"
	"path/filepath"
	"time"

	"github.com/sluice-gw/sluice/admin"
	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/cluster"
	clusterredis "github.com/sluice-gw/sluice/cluster/redis"
	"github.com/sluice-gw/sluice/workers"
)

// restoreTimeout bounds the first read of the stored tunings at start: a
// Redis that does not answer leaves the config in force until it does.
const restoreTimeout = 3 * time.Second

// openCluster opens where PATCHed settings and the workers' figures are
// shared: Redis with results.store: redis (every process), else a file
// beside the embedded result store (this process across restarts). shared
// tells which.
func (g *Gateway) openCluster() (store cluster.Store, shared bool, err error) {
	cfg := g.cfg
	if rc := cfg.Results.Redis; cfg.Results.Store == "redis" && rc != nil {
		return clusterredis.Open(clusterredis.Options{Addr: rc.Addr, Password: rc.Password, DB: rc.DB,
			KeyPrefix: rc.KeyPrefix}), true, nil
	}
	f, err := cluster.OpenFile(filepath.Join(cfg.Path(cfg.Results.Embedded.Dir), "tuning.json"))
	return f, false, err
}

// newNode joins this process to the cluster: stored tunings are applied
// over each backend's config in m, and with the worker role m's figures
// are reported. adminAddr is this process's admin address, for the figures.
func (g *Gateway) newNode(store cluster.Store, m *workers.Manager, adminAddr string) *cluster.Node {
	base := make(map[string]workers.Settings, len(g.cfg.Backends))
	for _, b := range g.cfg.Backends {
		base[b.Name] = workers.SettingsOf(b)
	}
	opts := cluster.Options{Backends: m.Names(), Admin: adminAddr, Log: g.log.With().Str("part", "cluster").Logger(),
		Apply: func(name string, t cluster.Tuning) {
			m.Tune(name, func(s *workers.Settings) { *s = admin.Over(base[name], t) })
		}}
	if g.has(Worker) {
		opts.Local = func(name string) (cluster.Figures, bool) {
			st, ok := m.Status(name)
			return cluster.Figures{Rate: st.Rate, Paused: st.Paused, InFlight: st.InFlight,
				ConcurrencyLimit: st.Limit, Share: st.Share,
				Attempts: st.Attempts, Succeeded: st.Succeeded, Failed: st.Failed,
				Retried: st.Retried, DeadLettered: st.DeadLettered}, ok
		}
	}
	return cluster.New(store, opts)
}

// restoreTuning applies the stored tunings before the workers start.
func (g *Gateway) restoreTuning(ctx context.Context, node *cluster.Node) {
	rctx, cancel := context.WithTimeout(ctx, restoreTimeout)
	defer cancel()
	if err := node.Restore(rctx); err != nil {
		g.log.Warn().Err(err).Msg("the stored tunings could not be read: the config's settings apply until they can")
	}
}

// drainOf is the monitor's source of what every worker takes off a
// request topic (backlog.Monitor.DrainFrom).
func drainOf(node *cluster.Node, names []string) func(topic string) (float64, bool) {
	byTopic := make(map[string]string, len(names))
	for _, n := range names {
		byTopic[broker.RequestTopic(n)] = n
	}
	return func(topic string) (float64, bool) {
		name, ok := byTopic[topic]
		if !ok {
			return 0, false
		}
		return node.DrainPerSecond(name)
	}
}
