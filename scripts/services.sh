#!/usr/bin/env bash
# Makes sure the services the test suite needs are installed and running:
# Redis on 127.0.0.1:6379 (result store tests) and RabbitMQ on
# 127.0.0.1:5672, guest/guest (RabbitMQ broker tests). Kafka tests use kfake, an
# in-process Kafka, unless KAFKA_BROKERS points at a real cluster;
# docker-compose.yml is validated by a Go test (compose-go), so no Docker is
# needed. Installs what the tests run, and only that, from Debian packages
# when a service is missing. Under CI (CI=true) a service that cannot be had
# is a failure. Also installs the log clients the interop tests run (winston,
# with scripts/node-clients.sh) and headless Chromium for the dashboard's
# browser test.
set -uo pipefail

log() { echo "services: $*"; }
fail() {
  log "$*"
  exit 1
}

# shellcheck source=scripts/apt.sh
. "$(dirname "$0")/apt.sh"

redis_up() {
  if command -v redis-cli >/dev/null; then
    [ "$(timeout 2 redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]
  else
    (exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 && timeout 2 head -c 5 <&3 | grep -q PONG) 2>/dev/null
  fi
}

ensure_redis() {
  if [ -n "${REDIS_ADDR:-}" ]; then
    log "using Redis at $REDIS_ADDR"
    return 0
  fi
  redis_up && { log "Redis is running on 127.0.0.1:6379"; return 0; }
  if ! command -v redis-server >/dev/null; then
    log "installing redis-server from Debian packages"
    apt_install redis-server || return 1
  fi
  log "starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/sluice-redis.log >/dev/null 2>&1 || return 1
  for _ in $(seq 50); do
    redis_up && return 0
    sleep 0.1
  done
  return 1
}

rabbit_up() {
  (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null
}

ensure_rabbitmq() {
  if [ -n "${RABBITMQ_URL:-}" ]; then
    log "using RabbitMQ at the RABBITMQ_URL given"
    return 0
  fi
  rabbit_up && { log "RabbitMQ is running on 127.0.0.1:5672"; return 0; }
  if ! command -v rabbitmq-server >/dev/null; then
    log "installing rabbitmq-server from Debian packages"
    apt_install rabbitmq-server || return 1
  fi
  log "starting rabbitmq-server"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  # -detached returns before the node exists; await_startup needs the node.
  for _ in $(seq 120); do
    timeout 30 rabbitmqctl await_startup >/dev/null 2>&1 && break
    sleep 1
  done
  for _ in $(seq 100); do
    rabbit_up && return 0
    sleep 0.2
  done
  return 1
}

chromium_path() {
  if [ -n "${SLUICE_CHROMIUM:-}" ]; then
    [ -x "$SLUICE_CHROMIUM" ] && echo "$SLUICE_CHROMIUM"
    return
  fi
  command -v chromium || command -v chromium-browser || command -v google-chrome
}

# ensure_chromium installs Debian's chromium (without its recommends, plus a
# font) when no Chromium is there. The test drives it headless; it fetches
# nothing.
ensure_chromium() {
  chromium_path >/dev/null && return 0
  [ -n "${SLUICE_CHROMIUM:-}" ] && return 1
  log "installing chromium from Debian packages"
  apt_install --no-install-recommends chromium fonts-liberation || return 1
  chromium_path >/dev/null
}

command -v go >/dev/null || fail "Go is not installed"
if ! ensure_redis; then
  if [ "${CI:-}" = true ]; then
    fail "Redis is required and could not be started (CI=true: a missing service is a failure)"
  fi
  fail "Redis is required for the result-store tests; install redis-server or set REDIS_ADDR"
fi
if ! ensure_rabbitmq; then
  if [ "${CI:-}" = true ]; then
    fail "RabbitMQ is required and could not be started (CI=true: a missing service is a failure)"
  fi
  fail "RabbitMQ is required for the RabbitMQ broker tests; install rabbitmq-server or set RABBITMQ_URL"
fi
if [ -n "${KAFKA_BROKERS:-}" ]; then
  log "Kafka tests run against $KAFKA_BROKERS"
else
  log "Kafka tests run against kfake (in-process); set KAFKA_BROKERS for a real cluster"
fi
# Real log clients for the interop tests (cmd/sluice/interop_test.go): winston,
# installed into a cache dir by scripts/node-clients.sh (the test runs it too,
# so a plain go test works; here an install problem shows before the suite),
# and python3 for logging.handlers.HTTPHandler.
if node_dir=$("$(dirname "$0")/node-clients.sh"); then
  log "winston for the interop tests is in $node_dir"
elif [ "${CI:-}" = true ]; then
  fail "winston could not be installed (CI=true: a missing client is a failure)"
else
  log "winston could not be installed: the winston interop test will skip"
fi
if command -v python3 >/dev/null; then
  log "python3 for the interop tests: $(command -v python3)"
elif [ "${CI:-}" = true ]; then
  fail "python3 is required for the Python HTTPHandler interop test (CI=true: a missing client is a failure)"
else
  log "python3 is not installed: the Python HTTPHandler interop test will skip"
fi
# Headless Chromium for the dashboard test (cmd/sluice/dashboard_test.go),
# which skips without it, or fails under CI=true.
if ensure_chromium; then
  log "Chromium for the dashboard test: $(chromium_path)"
elif [ "${CI:-}" = true ]; then
  fail "Chromium is required for the dashboard browser test and could not be installed (CI=true: a missing browser is a failure)"
else
  log "Chromium could not be installed (apt-get as root is needed, or set SLUICE_CHROMIUM): the dashboard browser test will skip"
fi
