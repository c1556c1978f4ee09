package gateway

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/config"
)

func TestParseRoles(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []Role
		err      bool
	}{
		{name: "all", in: "ingress,worker,collector", want: AllRoles},
		{name: "spaces and repeats", in: " worker , worker", want: []Role{Worker}},
		{name: "unknown", in: "ingress,router", err: true},
		{name: "empty", in: "", err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseRoles(tc.in)
			if tc.err {
				if !errors.Is(err, ErrRoles) {
					t.Fatalf("ParseRoles(%q) = %v, %v; want ErrRoles", tc.in, got, err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("ParseRoles(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestNewRoleRules(t *testing.T) {
	cfg := func(kind, store string) *config.Config {
		c := &config.Config{}
		c.Broker.Kind, c.Results.Store = kind, store
		return c
	}
	for _, tc := range []struct {
		name  string
		cfg   *config.Config
		roles []Role
		ok    bool
	}{
		{name: "embedded runs all", cfg: cfg("embedded", "embedded"), ok: true},
		{name: "embedded cannot split", cfg: cfg("embedded", "redis"), roles: []Role{Worker}},
		{name: "split needs redis", cfg: cfg("kafka", "embedded"), roles: []Role{Ingress}},
		{name: "split with redis", cfg: cfg("rabbitmq", "redis"), roles: []Role{Ingress, Collector}, ok: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg, Options{Roles: tc.roles})
			if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrRoles)) {
				t.Fatalf("New = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestGroupStopsInOrderAndReportsEarlyExit(t *testing.T) {
	g := newGroup()
	var order []string
	stopped := make(chan string, 2)
	run := func(name string) func(context.Context) error {
		return func(ctx context.Context) error { <-ctx.Done(); stopped <- name; return nil }
	}
	a, b := g.Go("a", run("a")), g.Go("b", run("b"))
	boom := errors.New("boom")
	g.Go("c", func(context.Context) error { return boom })
	select {
	case p := <-g.exited:
		if p.name != "c" || !errors.Is(p.err, boom) {
			t.Fatalf("early exit %s: %v, want c: boom", p.name, p.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("an early exit was not reported")
	}
	for _, p := range []*proc{b, a} {
		if err := g.Stop(p); err != nil {
			t.Fatal(err)
		}
		order = append(order, <-stopped)
	}
	if !slices.Equal(order, []string{"b", "a"}) {
		t.Fatalf("stopped %v, want b then a", order)
	}
	select {
	case p := <-g.exited:
		t.Fatalf("%s reported as an early exit after Stop", p.name)
	default:
	}
	g.StopAll() // everything has ended: returns at once
}
