#!/usr/bin/env bash
# Make sure redis-server, PostgreSQL's server binaries and Prometheus exist; install them with apt-get where absent.
# The tests start and stop their own throwaway instances (app/localservers.py, and tests/integration/test_metrics.py
# for Prometheus); nothing is left running.
set -euo pipefail

have_postgres() {
  command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
have_postgres || missing+=(postgresql)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)

if [ ${#missing[@]} -eq 0 ]; then
  echo "services: redis-server, PostgreSQL and Prometheus are installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "services: missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2
  exit 1
fi
echo "services: installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
# Another apt-get may hold the dpkg lock (a busy shared machine): wait for it rather than fail.
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian packages start a cluster, a redis and a prometheus service of their own (prometheus scraping itself
# on :9090); the tests use private instances, so stop what was just installed and keep it from starting at boot.
for pkg in "${missing[@]}"; do
  case "$pkg" in postgresql | redis-server | prometheus) ;; *) continue ;; esac
  service "$pkg" stop >/dev/null 2>&1 || true
  if command -v systemctl >/dev/null 2>&1; then systemctl disable "$pkg" >/dev/null 2>&1 || true; fi
  if command -v update-rc.d >/dev/null 2>&1; then update-rc.d "$pkg" disable >/dev/null 2>&1 || true; fi
done
echo "services: installed ${missing[*]}"
