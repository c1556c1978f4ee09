#!/usr/bin/env bash
# Installs the Node log clients the interop tests drive through sluice
# (cmd/sluice/interop_test.go) into a cache directory and prints that
# directory; its node_modules holds them. Reuses the directory when the pinned
# version is already there, so only the first run needs the npm registry.
#
#   SLUICE_NODE_DIR  where to install (default ~/.cache/sluice/node)
#
# When node or npm is missing and apt-get can be used as root, installs
# Debian's nodejs and npm. Exits non-zero, with the reason on stderr, when the
# clients cannot be had; the Go test then skips, or fails under CI=true.
set -euo pipefail

WINSTON_VERSION=3.19.0 # pinned: npm view winston version

log() { echo "node-clients: $*" >&2; }
fail() {
  log "$*"
  exit 1
}

# shellcheck source=scripts/apt.sh
. "$(dirname "$0")/apt.sh"

dir=${SLUICE_NODE_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/sluice/node}

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  if need_root_apt; then
    log "installing nodejs and npm from Debian packages"
    apt_install nodejs npm || fail "node/npm missing and apt-get install nodejs npm failed"
  fi
  command -v node >/dev/null || fail "node is not installed (install Node.js 18+ or set up apt as root)"
  command -v npm >/dev/null || fail "npm is not installed (install npm)"
fi

installed() {
  [ -f "$dir/node_modules/winston/package.json" ] || return 1
  [ "$(cd "$dir" && node -p 'require("./node_modules/winston/package.json").version' 2>/dev/null)" = "$WINSTON_VERSION" ]
}

mkdir -p "$dir" || fail "cannot create $dir"
# Several checkouts may share the cache: one installs at a time.
if command -v flock >/dev/null; then
  exec 9>"$dir/.lock"
  timeout 600 flock 9 || fail "timed out waiting for another install into $dir"
fi

if ! installed; then
  log "installing winston@$WINSTON_VERSION into $dir"
  out="$dir/.npm-install.log"
  if ! timeout 300 npm install --no-audit --no-fund --no-update-notifier --loglevel=error --prefer-offline \
    --fetch-retries=1 --fetch-retry-mintimeout=2000 --fetch-retry-maxtimeout=10000 --fetch-timeout=60000 \
    --prefix "$dir" "winston@$WINSTON_VERSION" >"$out" 2>&1; then
    grep -E '^npm error (code |[A-Za-z]*Error)' "$out" | head -3 >&2 || true
    fail "npm install winston@$WINSTON_VERSION into $dir failed (is the npm registry reachable? npm's output: $out)"
  fi
  installed || fail "winston@$WINSTON_VERSION is not in $dir/node_modules after npm install"
fi
echo "$dir"
