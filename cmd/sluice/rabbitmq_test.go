package main

import (
	"fmt"
	"os"
)

func rabbitURL() string {
	if u := os.Getenv("RABBITMQ_URL"); u != "" {
		return u
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

func rabbitCfg(prefix string) string {
	return fmt.Sprintf("broker:\n  kind: rabbitmq\n  rabbitmq: { url: %q, queue_prefix: %q }\n", rabbitURL(), prefix)
}
