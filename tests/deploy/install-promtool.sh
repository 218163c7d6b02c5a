#!/usr/bin/env bash
# Installs promtool (Debian's `prometheus` package) for tests/deploy's alert-rule tests; `make test` runs it.
# Idempotent: nothing happens when promtool is on PATH or $PROMTOOL names one. The package also ships a Prometheus
# server, which must not be left running: policy-rc.d refuses its start during the install, and on a machine run
# by systemd the unit is disabled and stopped. Where it cannot install (not root, no apt-get) it says so and goes
# on: the test skips there, and fails under CI (CI=true), where this script fails too.
set -euo pipefail

if [ -n "${PROMTOOL:-}" ] || command -v promtool >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "promtool is missing and cannot be installed here (needs root and apt-get): the alert-rule tests skip." \
         "Install Debian's prometheus package or set PROMTOOL=/path/to/promtool." >&2
    [ "${CI:-}" = true ] && exit 1
    exit 0
fi

policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# tests/deploy/install-promtool.sh: no service starts while it installs\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
start=$(date +%s)
apt-get update -qq -o DPkg::Lock::Timeout=600
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 \
    prometheus >/dev/null
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
command -v promtool >/dev/null
echo "installed $(promtool --version 2>&1 | head -n1) in $(( $(date +%s) - start )) s"
