#!/usr/bin/env bash
# Make sure redis-server and PostgreSQL's server binaries exist; install them with apt-get where absent.
# The tests start and stop their own throwaway instances (app/localservers.py); nothing is left running.
set -euo pipefail

have_postgres() {
  command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
have_postgres || missing+=(postgresql)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)

if [ ${#missing[@]} -eq 0 ]; then
  echo "services: redis-server and PostgreSQL are installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "services: missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2
  exit 1
fi
echo "services: installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian package starts a cluster and a redis service of its own; the tests use private instances.
service postgresql stop >/dev/null 2>&1 || true
service redis-server stop >/dev/null 2>&1 || true
echo "services: installed ${missing[*]}"
