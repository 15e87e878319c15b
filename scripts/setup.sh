#!/usr/bin/env bash
# Install everything the tests, benchmarks and demo need on a fresh Debian machine,
# as root: Debian packages, and a virtualenv (.venv) with the kit and its test tools.
# Idempotent: a second run only checks. Grid Engine itself is installed and started
# by lab/ge-cluster.sh (the tests and the demo call it).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

APT_PKGS="python3-venv python3-dev gcc curl openssl nginx-light docker-registry siftool squashfs-tools busybox-static charliecloud-runtime prometheus prometheus-node-exporter"
missing=""
for p in $APT_PKGS; do
  dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing$missing"
  apt-get update -qq -o DPkg::Lock::Timeout=900
  apt-get install -y -qq -o DPkg::Lock::Timeout=900 $missing >/dev/null
fi
# Debian's docker-registry, nginx, prometheus and prometheus-node-exporter start
# nothing here (no systemd), and the tests start their own instances on 127.0.0.1 with
# their own configs (tests/support/promstack.py for the metrics pair).

# The system Python, not a per-user one: Grid Engine runs the kit's hooks as root,
# sgeadmin and job owners, who may not read another user's home.
PY=/usr/bin/python3
if [ ! -x .venv/bin/python ] || [ "$(readlink -f .venv/bin/python)" != "$(readlink -f $PY)" ]; then
  rm -rf .venv
  $PY -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# The kit, and the placement simulator, which is its own distribution (sim/): the tests
# and the benchmarks use both. setuptools prints a boxed deprecation notice between two
# `!!` lines (and the source line that raised it): drop the whole box, keep anything
# else pip says.
.venv/bin/python -m pip install -q -e '.[test,bench]' -e ./sim 2>&1 \
  | awk '/^[[:space:]]*!![[:space:]]*$/ {box = !box; next}
         box || tolower($0) ~ /warning/ || /WheelFile\(/ || /^[[:space:]]*$/ {next} {print}' || true
.venv/bin/python -c 'import sge, sge_sim, numpy, yaml, psutil, filelock, pytest, hypothesis, boto3' \
  || { echo "setup: the virtualenv is incomplete" >&2; exit 1; }
echo "setup: ok"
