package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"

	"github.com/sluice-gw/sluice/config"
	"github.com/sluice-gw/sluice/gateway"
)

// newLogger logs to w as JSON, or as text with log.format: console —
// coloured only when w is a terminal (and $NO_COLOR is empty), so a log
// written to a file or a pipe carries no escape codes.
func newLogger(cfg *config.Config, w io.Writer) zerolog.Logger {
	lvl, err := zerolog.ParseLevel(cfg.Log.Level)
	if err != nil {
		lvl = zerolog.InfoLevel
	}
	if cfg.Log.Format == "console" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly, NoColor: !colorTerminal(w)}
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger()
}

// colorTerminal reports whether w is a terminal that colour suits.
func colorTerminal(w io.Writer) bool {
	if os.Getenv("NO_COLOR") != "" { // https://no-color.org
		return false
	}
	f, ok := w.(interface{ Fd() uintptr })
	return ok && (isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd()))
}

// serve runs the gateway (package gateway) until ctx ends.
func serve(ctx context.Context, args []string, stdout, stderr io.Writer, ready listening) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	path := configFlag(fs)
	rolesFlag := fs.String("roles", "ingress,worker,collector", "roles to run: ingress,worker,collector")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	roles, err := gateway.ParseRoles(*rolesFlag)
	if err != nil {
		fmt.Fprintf(stderr, "sluice serve: -%v\n", err)
		return errUsage
	}
	cfg, err := config.Load(*path)
	if err != nil {
		printConfigErrors(stderr, *path, err)
		return errConfig
	}
	gw, err := gateway.New(cfg, gateway.Options{Roles: roles, Log: newLogger(cfg, stderr), Ready: ready, Version: version})
	if errors.Is(err, gateway.ErrRoles) {
		fmt.Fprintf(stderr, "sluice serve: -%v\n", err) // "-roles: ..."
		return errUsage
	}
	if err != nil {
		return err
	}
	return gw.Run(ctx)
}
