package rabbitctl

import (
	"context"
	"fmt"
	"os/exec"
	"time"
)

// Ctl runs rabbitmqctl with args.
func Ctl(ctx context.Context, args ...string) error {
	if out, err := exec.CommandContext(ctx, "rabbitmqctl", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("rabbitmqctl %v: %v\n%s", args, err, out)
	}
	return nil
}

// Output runs rabbitmqctl with args and returns what it printed.
func Output(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "rabbitmqctl", args...).Output()
	if err != nil {
		return "", fmt.Errorf("rabbitmqctl %v: %w", args, err)
	}
	return string(out), nil
}

// Kill sends SIGKILL to the broker's Erlang VM.
func Kill() error {
	if out, err := exec.Command("pkill", "-9", "-f", "beam.smp").CombinedOutput(); err != nil {
		return fmt.Errorf("pkill beam.smp: %v %s", err, out)
	}
	return nil
}

// EnsureRunning brings the broker back, whatever was done to it: start_app
// after a stop_app, or a new node after a kill, waiting until it is up.
func EnsureRunning(ctx context.Context) error {
	if Ctl(ctx, "start_app") == nil {
		return nil
	}
	_ = exec.Command("rabbitmq-server", "-detached").Run()
	for ctx.Err() == nil {
		if Ctl(ctx, "await_startup") == nil {
			return nil
		}
		time.Sleep(time.Second)
	}
	return fmt.Errorf("RabbitMQ did not come back: %w", ctx.Err())
}
