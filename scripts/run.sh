#!/usr/bin/env bash
# `make run`: the demo log store on 127.0.0.1:9001 and sluice on the embedded
# broker in front of it (config: sluice.yaml). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
bin/sluice demo-backend -listen 127.0.0.1:9001 -capacity 8 -latency 200ms -jitter 100ms -fail-rate 0.1 &
demo=$!
trap 'kill $demo 2>/dev/null || true' EXIT
sleep 0.3
cat <<'MSG'

  sluice is starting on http://127.0.0.1:8080 (admin http://127.0.0.1:9090).
  Try, in another terminal:

  # submit a log batch: 202 with an id, in about a millisecond
  curl -si -X POST http://127.0.0.1:8080/v1/logs \
       -H 'Content-Type: application/json' \
       -d '{"source":"web","records":[{"level":"info","msg":"hello"}]}'

  # poll it (replace ID), waiting up to 10 s for the outcome
  curl -s 'http://127.0.0.1:8080/v1/requests/ID?wait=10s'

  # the backend's own answer, replayed as is
  curl -si http://127.0.0.1:8080/v1/requests/ID/response

  # a burst of 100: watch the demo store's 8-slot capacity and 10% failures being absorbed
  for i in $(seq 100); do curl -s -o /dev/null -X POST http://127.0.0.1:8080/v1/logs \
       -d '{"records":[{"level":"info","msg":"n'$i'"}]}'; done
  curl -s http://127.0.0.1:9090/admin/backends

  # tune the backend live
  curl -s -X PATCH http://127.0.0.1:9090/admin/backends/logstore -d '{"rate":5}'

MSG
bin/sluice serve -config sluice.yaml
