#!/usr/bin/env bash
# Makes sure the services the test suite needs are there and running. The
# embedded broker and result store need nothing outside the process, so this
# release checks only the toolchain. (Later brokers add their servers here.)
set -euo pipefail
command -v go >/dev/null || { echo "services: Go is not installed" >&2; exit 1; }
echo "services: embedded broker and result store run in-process; nothing to start"
