#!/usr/bin/env bash
# Make sure redis-server, redis-sentinel (the failover tests), PostgreSQL's server binaries and Prometheus exist, and a headless Chromium with its
# chromedriver for the fleet page test (tests/integration/test_fleet_page.py); install them with apt-get where
# absent. The tests start and stop their own throwaway instances (harness/servers.py, and
# tests/integration/test_metrics.py for Prometheus); nothing is left running.
# Chromium is optional: where it cannot be installed the page test skips, saying why, and the rest still runs.
set -euo pipefail

have_postgres() {
  command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
have_postgres || missing+=(postgresql)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
# The multi-host tests: `ip netns` for the hosts, `ip rule` and `ss -K` to cut one host's path to PostgreSQL.
{ command -v ip >/dev/null 2>&1 && command -v ss >/dev/null 2>&1; } || missing+=(iproute2)

browser=()
# The page test points Selenium at exactly these two paths; it never downloads a driver.
[ -x /usr/bin/chromium ] || browser+=(chromium)
[ -x /usr/bin/chromedriver ] || browser+=(chromium-driver)
# A page without any font renders as empty boxes; DejaVu is Debian's default.
{ command -v fc-list >/dev/null 2>&1 && [ -n "$(fc-list 2>/dev/null)" ]; } || browser+=(fontconfig fonts-dejavu-core)

if [ ${#missing[@]} -eq 0 ] && [ ${#browser[@]} -eq 0 ]; then
  echo "services: redis-server, redis-sentinel, PostgreSQL, Prometheus and Chromium are installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  if [ ${#browser[@]} -gt 0 ]; then
    echo "services: missing ${browser[*]} (apt-get install ${browser[*]}); the fleet page test will skip" >&2
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    echo "services: missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2
    exit 1
  fi
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# Another apt-get may hold the dpkg lock (a busy shared machine): wait for it rather than fail.
apt_get() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }
apt_get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  echo "services: installing ${missing[*]} with apt-get"
  apt_get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian packages start a cluster, a redis, a sentinel and a prometheus service of their own (prometheus scraping
  # itself on :9090); the tests use private instances, so stop what was just installed and keep it from
  # starting at boot.
  for pkg in "${missing[@]}"; do
    case "$pkg" in postgresql | redis-server | redis-sentinel | prometheus) ;; *) continue ;; esac
    service "$pkg" stop >/dev/null 2>&1 || true
    if command -v systemctl >/dev/null 2>&1; then systemctl disable "$pkg" >/dev/null 2>&1 || true; fi
    if command -v update-rc.d >/dev/null 2>&1; then update-rc.d "$pkg" disable >/dev/null 2>&1 || true; fi
  done
  echo "services: installed ${missing[*]}"
fi
if [ ${#browser[@]} -gt 0 ]; then
  echo "services: installing ${browser[*]} with apt-get"
  if apt_get install -y -qq --no-install-recommends "${browser[@]}" >/dev/null; then
    echo "services: installed ${browser[*]}"
  else
    echo "services: could not install ${browser[*]}; the fleet page test will skip" >&2
  fi
fi
