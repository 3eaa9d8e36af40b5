#!/usr/bin/env bash
# The Debian packages that the tests start for real: PostgreSQL (the deployment test, `python -m qpipe.bench
# events`), Chromium (the browser test, driven by Playwright from PyPI: no browser download) and Redis (the
# Celery test's broker). Installs what is missing; nothing when all are there.
set -euo pipefail
missing=()
for package in postgresql chromium redis-server; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
root=(); [ "$(id -u)" -eq 0 ] || root=(sudo)
export DEBIAN_FRONTEND=noninteractive
echo "installing ${missing[*]} (Debian packages)"
"${root[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null \
  || { "${root[@]}" apt-get update -qq && "${root[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null; }
