# Sourced by the scripts that install what the tests need: apt_install
# installs Debian packages when this runs as root with apt-get, updating
# the package lists once per machine (a marker in /tmp), each step bounded
# in time. Returns non-zero when it cannot.

need_root_apt() {
  command -v apt-get >/dev/null || return 1
  [ "$(id -u)" = 0 ] || return 1
}

apt_install() {
  need_root_apt || return 1
  if [ ! -f /tmp/.sluice-apt-updated ]; then
    timeout 300 apt-get update -qq >/dev/null 2>&1 && touch /tmp/.sluice-apt-updated
  fi
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "$@" >/dev/null 2>&1
}
