#!/usr/bin/env bash
# Make sure redis-server and PostgreSQL's server binaries exist, and a headless Chromium with its chromedriver for
# the fleet page test (tests/integration/test_fleet_page.py); install them with apt-get where absent.
# The tests start and stop their own throwaway instances (app/localservers.py); nothing is left running.
# Chromium is optional: where it cannot be installed the page test skips, saying why, and the rest still runs.
set -euo pipefail

have_postgres() {
  command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
have_postgres || missing+=(postgresql)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)

browser=()
# The page test points Selenium at exactly these two paths; it never downloads a driver.
[ -x /usr/bin/chromium ] || browser+=(chromium)
[ -x /usr/bin/chromedriver ] || browser+=(chromium-driver)
# A page without any font renders as empty boxes; DejaVu is Debian's default.
{ command -v fc-list >/dev/null 2>&1 && [ -n "$(fc-list 2>/dev/null)" ]; } || browser+=(fontconfig fonts-dejavu-core)

if [ ${#missing[@]} -eq 0 ] && [ ${#browser[@]} -eq 0 ]; then
  echo "services: redis-server, PostgreSQL and Chromium are installed"
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
apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  echo "services: installing ${missing[*]} with apt-get"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian package starts a cluster and a redis service of its own; the tests use private instances.
  service postgresql stop >/dev/null 2>&1 || true
  service redis-server stop >/dev/null 2>&1 || true
  echo "services: installed ${missing[*]}"
fi
if [ ${#browser[@]} -gt 0 ]; then
  echo "services: installing ${browser[*]} with apt-get"
  if apt-get install -y -qq --no-install-recommends "${browser[@]}" >/dev/null; then
    echo "services: installed ${browser[*]}"
  else
    echo "services: could not install ${browser[*]}; the fleet page test will skip" >&2
  fi
fi
